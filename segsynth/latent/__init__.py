"""Deprecated: latent mode's autoencoder moved to :mod:`segsynth.autoencoder`. ``segsynth.latent``
and its submodules (``.autoencoder``, ``.cache``, ``.config``, ``.train``) stay importable, as the
very objects of the new package, for one release and warn on import."""

from segsynth.renamed import alias_package

alias_package(__name__, "segsynth.autoencoder")
