"""Sample images during training: prompt files (sd-scripts' syntax), samplers, generation."""
