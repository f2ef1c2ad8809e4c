"""Deprecated: the ControlNet trainer moved to :mod:`segsynth.controlnet` (the package holds the
ControlNet, not the frozen backbone). ``segsynth.backbone`` and its submodules stay importable, as
the very objects of the new package, for one release and warn on import."""

from segsynth.renamed import alias_package

alias_package(__name__, "segsynth.controlnet")
