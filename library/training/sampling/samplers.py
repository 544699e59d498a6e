"""Sampler names of sd-scripts (``sample_sampler``) mapped to diffusers' schedulers."""

from __future__ import annotations

from library.util.registry import Registry

SAMPLERS = Registry("sample_sampler")


def _register(names: tuple[str, ...], class_name: str, **kwargs) -> None:
    def factory(config):
        import diffusers

        return getattr(diffusers, class_name).from_config(config, **kwargs)

    for name in names:
        SAMPLERS.register(name, description=f"diffusers {class_name} {kwargs or ''}".strip())(factory)


_register(("ddim",), "DDIMScheduler")
_register(("pndm",), "PNDMScheduler")
_register(("lms", "k_lms"), "LMSDiscreteScheduler")
_register(("euler", "k_euler"), "EulerDiscreteScheduler")
_register(("euler_a", "k_euler_a"), "EulerAncestralDiscreteScheduler")
_register(("heun",), "HeunDiscreteScheduler")
_register(("dpm_2", "k_dpm_2"), "KDPM2DiscreteScheduler")
_register(("dpm_2_a", "k_dpm_2_a"), "KDPM2AncestralDiscreteScheduler")
_register(("dpmsolver",), "DPMSolverMultistepScheduler", algorithm_type="dpmsolver")
_register(("dpmsolver++",), "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++")
_register(("dpmsingle",), "DPMSolverSinglestepScheduler")


def make_sampler(name: str, train_scheduler_config):
    """A fresh inference scheduler ``name`` built from the training scheduler's config."""
    entry = SAMPLERS.find(name)
    if entry is None:
        from library.errors import ConfigError

        raise ConfigError(f"option 'sample_sampler': {SAMPLERS.unknown_message(name)}")
    return entry.factory(train_scheduler_config)
