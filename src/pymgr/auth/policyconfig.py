"""The ``[policy]`` section as config: its rules and its delegates, each checked as the config loads.

A rule's subjects and action patterns are parsed here (``_policysyntax.py``),
so a malformed one is a config error naming its field; whether a subject
names a configured key, and what each rule allows, is the compiled
policy's business (``policy.py``). A person's subject (``console:alice``)
must name a declared delegate's namespace (checked once the whole section is read).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from pymgr.auth._policysyntax import NAMESPACE_PATTERN, RESERVED_KINDS, parse_pattern, parse_subject

__all__ = ["ROLE_PATTERN", "DelegateConfig", "PolicyConfig", "PolicyRule", "validation_context"]

#: A role a delegate may assert (``role:NAME`` in rules, ``X-Pymgr-Roles`` on the wire).
ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


#: The validation context's key for the delegates' namespaces (``validation_context``).
_NAMESPACES = "policy_namespaces"


def validation_context(raw: Any) -> dict[str, frozenset[str]]:
    """The delegates' namespaces of a raw config, so each rule's subject is checked where it is written.

    Without it (a ``PolicyConfig`` built by hand) a subject of any well-formed namespace passes its field,
    and the section's own check below refuses one no delegate has, without the line.
    """
    policy = raw.get("policy") if isinstance(raw, dict) else None
    delegates = policy.get("delegates") if isinstance(policy, dict) else None
    names = (
        [d.get("namespace") for d in delegates if isinstance(d, dict)] if isinstance(delegates, list) else []
    )
    return {_NAMESPACES: frozenset(name for name in names if isinstance(name, str))}


def _check_subject(text: str, info: ValidationInfo) -> str:
    parse_subject(text, (info.context or {}).get(_NAMESPACES))
    return text


def _check_pattern(text: str) -> str:
    parse_pattern(text)
    return text


def _check_delegate_subject(text: str) -> str:
    subject = parse_subject(text)
    if subject.kind not in ("user", "uid"):
        raise ValueError(
            f"a delegate is one local user: user:NAME or uid:N, not {text!r} (delegation is served on the "
            "Unix socket only, where the kernel names the caller)"
        )
    return text


class PolicyRule(BaseModel):
    """One ``[[policy.rules]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    #: Shown in errors, start-up notes and 403 details.
    name: str | None = None
    #: Who the rule is for: any of these.
    subjects: list[Annotated[str, AfterValidator(_check_subject)]] = Field(min_length=1)
    #: What they may do: any of these patterns.
    actions: list[Annotated[str, AfterValidator(_check_pattern)]] = Field(min_length=1)
    #: Also lift an action's own ``@action(allow=...)`` requirement (logged at start).
    override: bool = False


class DelegateConfig(BaseModel):
    """One ``[[policy.delegates]]`` entry: a local user that may act for the people of its namespace."""

    model_config = ConfigDict(extra="forbid")

    #: The delegate: ``user:NAME`` or ``uid:N`` on the Unix socket.
    subject: Annotated[str, AfterValidator(_check_delegate_subject)]
    #: The people it acts for are ``NAMESPACE:NAME`` to the policy; it can name no one else.
    namespace: str = Field(pattern=NAMESPACE_PATTERN)
    #: The roles it may assert for them (``role:NAME``); any other is refused.
    roles: list[Annotated[str, Field(pattern=ROLE_PATTERN)]] = Field(default_factory=list)
    #: Whether its calls without ``X-Pymgr-On-Behalf-Of`` are its own (judged by the rules naming its
    #: user, uid, groups, ``any``); false refuses them (403): a delegate acts for people, not for itself.
    own_calls: bool = False

    @model_validator(mode="after")
    def _not_a_policy_word(self) -> DelegateConfig:
        if self.namespace in RESERVED_KINDS:
            raise ValueError(
                f"namespace {self.namespace!r} is a word of the policy itself ({', '.join(sorted(RESERVED_KINDS))}); "
                "choose another, e.g. 'console'"
            )
        return self


class PolicyConfig(BaseModel):
    """The ``[policy]`` section."""

    model_config = ConfigDict(extra="forbid")

    rules: list[PolicyRule] = Field(default_factory=list)
    delegates: list[DelegateConfig] = Field(default_factory=list)
    #: Longest person name a delegate may send in ``X-Pymgr-On-Behalf-Of`` (characters, all ASCII).
    max_person_name_length: int = Field(64, ge=1, le=256)

    @model_validator(mode="after")
    def _persons_name_delegates(self) -> PolicyConfig:
        namespaces: set[str] = set()
        for delegate in self.delegates:
            if delegate.namespace in namespaces:
                raise ValueError(
                    f"namespace {delegate.namespace!r} is given to two delegates; each delegate needs its own, "
                    "so that a person's name says who vouched for it"
                )
            namespaces.add(delegate.namespace)
        for index, rule in enumerate(self.rules):
            for subject in rule.subjects:
                try:
                    parse_subject(subject, frozenset(namespaces))
                except ValueError as exc:
                    label = f"rule #{index + 1}" + (f" ({rule.name!r})" if rule.name else "")
                    raise ValueError(f"{label}: {exc}") from None
        return self

    def namespaces(self) -> frozenset[str]:
        """The delegates' namespaces: what ``NAMESPACE:NAME`` subjects may name."""
        return frozenset(delegate.namespace for delegate in self.delegates)
