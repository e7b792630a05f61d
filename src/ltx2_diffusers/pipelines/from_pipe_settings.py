"""The pipeline-level settings `from_pipe` carries to the new pipeline. diffusers' `from_pipe` shares components,
so what a user set on a component (its tiling, attention processors, hooks) follows it; what this package keeps on
the pipeline instead follows here, with the component it is about: unless the caller passes that component in."""

from __future__ import annotations


# attribute: the components it is about (carried only when the new pipeline shares every one of them)
SETTINGS = {
    "_vae_tiling": ("vae",),  # `enable_vae_tiling`
    "_transformer_acceleration": ("transformer",),  # `set_transformer_acceleration`
    # the memory tier applied (`enable_memory_tier`) and the decode budget `enable_memory_budget` counted
    "_memory_tier": ("transformer", "vae"),
    "_walk_decode_budget": ("transformer", "vae"),
}


def carry_settings(source, target) -> None:
    """Copy `SETTINGS` that `source` holds onto `target` where `target` shares their components with `source`."""
    for attribute, components in SETTINGS.items():
        value = source.__dict__.get(attribute)
        if value is None or attribute in target.__dict__:
            continue
        if all(getattr(target, name, None) is getattr(source, name, None) for name in components):
            setattr(target, attribute, value)
