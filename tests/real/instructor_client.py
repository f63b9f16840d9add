"""Run by the real tier in .venv-instructor (instructor's own environment, see pyproject.toml):
asks the gateway at argv[1] for a City through instructor and prints it as JSON."""

from __future__ import annotations

import json
import sys

import instructor
from openai import OpenAI
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str


def main() -> None:
    client = instructor.from_openai(OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0))
    city = client.chat.completions.create(
        model=sys.argv[2],
        response_model=City,
        messages=[{"role": "user", "content": "Name a city and its country."}],
        max_tokens=60,
        temperature=0,
        max_retries=0,
    )
    print(json.dumps({"city": city.model_dump(), "instructor": instructor.__version__}))


if __name__ == "__main__":
    main()
