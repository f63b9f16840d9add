"""models.yaml → immutable, validated settings.

Validation errors name the YAML path of each problem (`models.mistral-7b.sampling.temprature`), and
relative model paths are resolved against the directory of the configuration file. `values.py` holds
the value types, `model.py` a local model's entry, `remote.py` a remote one's, `settings.py` the
gateway section and the whole document, `loading.py` reading and checking it.
"""

from gateway.config.loading import DEFAULT_CONFIG_NAME, default_settings, json_schema, load_settings, parse_settings
from gateway.config.model import (
    ModelEntry,
    ModelSection,
    OutputSection,
    ReasoningSection,
    RuntimeSection,
    SamplingSection,
)
from gateway.config.remote import CircuitBreakerSection, UpstreamEntry, UpstreamServer
from gateway.config.settings import ApiKey, GatewaySection, ImageFetch, PrefixStore, Settings

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ApiKey",
    "CircuitBreakerSection",
    "GatewaySection",
    "ImageFetch",
    "ModelEntry",
    "ModelSection",
    "OutputSection",
    "PrefixStore",
    "ReasoningSection",
    "RuntimeSection",
    "SamplingSection",
    "Settings",
    "UpstreamEntry",
    "UpstreamServer",
    "default_settings",
    "json_schema",
    "load_settings",
    "parse_settings",
]
