"""The model layer: families (SD1, SD2), loading, LDM <-> diffusers conversion, the built-in tiny model."""
