"""The synthetic set's manifest under its historical import path.

``manifest.jsonl`` is read by segmentation mixing, the nnU-Net export and the evaluation as well as
written here, so its reader and writer live with the other contracts in
:mod:`segsynth.artifacts.manifest` (below every stage, see ``docs/architecture.md``); this module
keeps ``segsynth.synth.manifest`` imports working.
"""

from __future__ import annotations

from segsynth.artifacts.manifest import ManifestWriter, manifest_name, read_manifest, rejected_name, write_manifest
from segsynth.artifacts.schemas import ManifestRecord, RejectedRecord

__all__ = [
    "ManifestRecord",
    "ManifestWriter",
    "RejectedRecord",
    "manifest_name",
    "read_manifest",
    "rejected_name",
    "write_manifest",
]
