"""Memory and VRAM accounting: pools, estimates, footprints, the placement planner, the GPU inventory."""
