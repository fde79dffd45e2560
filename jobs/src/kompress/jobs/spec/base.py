"""Base class for every spec section: camelCase in YAML, snake_case in Python, unknown fields rejected."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_attribute_docstrings=True,
    )


# The resource's identity, defined once: the CRD, the operator and local spec files all use these.
GROUP = "kompress.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelOptimization"
PLURAL = "modeloptimizations"
SHORT_NAME = "mopt"
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
