"""The operator's tenant policy, checked before a Job is created: whoever may create a ModelOptimization must
not thereby choose any image, run as any ServiceAccount, or have any Secret of the namespace injected into a
pod. The cluster admin sets the policy in the chart's values (`policy:`); a violation fails the resource with
reason PolicyDenied and a message naming the field. Pure functions of the spec, the settings and the Secret's
labels."""

from __future__ import annotations

from dataclasses import dataclass

from kompress.jobs.spec.document import OptimizationSpec
from kompress.operator.settings import Settings


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def image_allowed(image: str, settings: Settings) -> bool:
    """The engine image itself, or one under an allowed prefix (match whole path segments or tags: a prefix
    `ghcr.io/kompress/` does not allow `ghcr.io/kompress-evil/...`)."""
    return image == settings.engine_image or any(image.startswith(p) for p in settings.allowed_image_prefixes)


def violations(spec: OptimizationSpec, settings: Settings, secret_labels: dict[str, str] | None) -> list[Violation]:
    """What `spec` asks for that the policy forbids. `secret_labels`: the labels of the Secret that
    spec.storageSecretRef names (None when it names none or it does not exist: the caller says so)."""
    found: list[Violation] = []
    res = spec.resources
    if res.image and not image_allowed(res.image, settings):
        allowed = ", ".join(settings.allowed_image_prefixes) or "none (only the engine image)"
        found.append(Violation("spec.resources.image", f"image {res.image!r} is not allowed by the operator's "
                               f"policy (allowed prefixes: {allowed}; chart value policy.allowedImagePrefixes)"))
    if res.service_account_name and res.service_account_name not in settings.allowed_service_accounts:
        allowed = ", ".join(settings.allowed_service_accounts) or "none"
        found.append(Violation("spec.resources.serviceAccountName", f"ServiceAccount {res.service_account_name!r} "
                               f"is not allowed by the operator's policy (allowed: {allowed}; chart value "
                               "policy.allowedServiceAccounts)"))
    label = settings.storage_secret_label
    if spec.storage_secret_ref and label and secret_labels is not None and secret_labels.get(label) != "true":
        found.append(Violation("spec.storageSecretRef", f"Secret {spec.storage_secret_ref.name!r} is not labelled "
                               f"{label}=\"true\": only Secrets labelled for storage may be given to a Job (kubectl "
                               f"label secret {spec.storage_secret_ref.name} {label}=true)"))
    return found
