"""The ``--quick`` / full profiles of the speed benchmarks: an option left unset takes its profile's value."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def fill_profile(args: argparse.Namespace, quick: Mapping[str, Any], full: Mapping[str, Any]) -> argparse.Namespace:
    """Set every option that is still None to the value of the ``--quick`` profile or of the full one."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
