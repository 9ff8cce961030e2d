"""The ACL file: who may publish to a topic, subscribe to a filter, read a message.

mosquitto-style ``topic`` / ``user`` / ``pattern`` lines, with ``deny`` rules, and
``address`` lines (docs/authentication.md); :class:`AclFile` answers for one client at
a time.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterator, Mapping

import attrs

from trio_mqtt.auth.textfile import content_lines, read_text
from trio_mqtt.errors import ConfigError, RemoteProtocolError
from trio_mqtt.mqtt.topics import (
    SHARE_PREFIX,
    parse_shared_filter,
    topic_matches,
    validate_topic_filter,
)
from trio_mqtt.networks import IPNetwork, address_in, parse_network

__all__ = ["Access", "AclFile", "AclRule", "filter_covers"]


class Access(enum.Flag):
    """What an ACL rule grants (or denies): ``read`` (subscribe), ``write`` (publish), or both."""

    READ = 1
    WRITE = 2
    READWRITE = READ | WRITE


_ACCESS_WORDS = {"read": Access.READ, "write": Access.WRITE, "readwrite": Access.READWRITE}
_DENY = "deny"  # the access word of a rule that takes read and write away
_PLACEHOLDERS = {"u", "c"}
_PLACEHOLDER = re.compile(r"%([uc])")


@attrs.frozen
class AclRule:
    """One ``topic`` or ``pattern`` line: an access and a topic filter (line for messages).

    A ``deny`` rule (``topic deny FILTER``) has ``deny=True`` and takes *access* (read
    and write) away wherever its filter matches, whatever other rules grant.
    """

    access: Access
    topic_filter: str
    line: int = 0
    deny: bool = False

    def grants(self, access: Access) -> bool:
        return not self.deny and access in self.access

    def denies(self, access: Access) -> bool:
        return self.deny and access in self.access


def filter_covers(rule_filter: str, requested: str) -> bool:
    """Whether every topic *requested* matches is also matched by *rule_filter*.

    Both are valid, non-shared topic filters. ``sensors/#`` covers ``sensors/+/temp``;
    ``sensors/+/temp`` does not cover ``sensors/#``. A rule starting with a wildcard
    does not cover a filter for ``$`` topics (it does not match them either).
    """
    rule = rule_filter.split("/")
    wanted = requested.split("/")
    if wanted[0].startswith("$") and rule[0] in ("+", "#"):
        return False
    for index, level in enumerate(rule):
        if level == "#":
            return True  # matches the levels so far and anything below them
        if index >= len(wanted):
            return False  # requested matches a topic that ends here; the rule needs more
        asked = wanted[index]
        if asked == "#":
            # Requested also matches the parent topic (the levels before this one), which
            # only a '#' here would match too; but when that parent would be an empty
            # topic name (none, or a single empty level) it does not exist, and a rule
            # ending in '+/#' here matches exactly the same topics.
            no_parent = index == 0 or (index == 1 and wanted[0] == "")
            return no_parent and rule[index:] == ["+", "#"]
        if level == "+":
            continue
        if asked == "+" or asked != level:
            return False
    return len(rule) == len(wanted)


def _safe_identity(identity: str | None) -> bool:
    """Whether a username / client id may be substituted into a pattern.

    An empty identity, one with a wildcard or level separator, or one starting with
    ``$`` could widen the pattern to other users' topics or to server topics.
    """
    if not identity:
        return False
    return not ("+" in identity or "#" in identity or "/" in identity or identity[0] == "$")


@attrs.frozen
class _Pattern:
    rule: AclRule
    uses_username: bool
    uses_client_id: bool

    def expand(self, username: str | None, client_id: str) -> AclRule | None:
        """The rule for one client, or None when its identity cannot be substituted."""
        values: dict[str, str] = {}
        if self.uses_username:
            if username is None or not _safe_identity(username):
                return None
            values["u"] = username
        if self.uses_client_id:
            if not _safe_identity(client_id):
                return None
            values["c"] = client_id
        if not values:
            return self.rule
        return attrs.evolve(self.rule, topic_filter=_substitute(self.rule.topic_filter, values))


def _substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``%u`` / ``%c`` in one pass, so a username containing ``%c`` stays literal."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _check_placeholders(text: str) -> tuple[bool, bool]:
    """``(uses %u, uses %c)``; ``ValueError`` for any other ``%`` sequence."""
    index = text.find("%")
    while index != -1:
        letter = text[index + 1 : index + 2]
        if letter not in _PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {text[index : index + 2]!r} in {text!r} "
                "(allowed: %u for the username, %c for the client id)"
            )
        index = text.find("%", index + 2)
    return "%u" in text, "%c" in text


def _check_filter(text: str) -> None:
    if text.startswith(SHARE_PREFIX):
        raise ValueError(
            f"{text!r}: write rules without the '$share/<group>/' prefix; "
            "a shared subscription is checked against its topic filter"
        )
    try:
        validate_topic_filter(text, allow_shared=False)
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None


def _parse_rule(words: list[str], number: int) -> tuple[AclRule, int]:
    """Parse ``[access] filter`` after the keyword; returns the rule and words used.

    With an access word and a word after it, that word is the filter (``topic read #``
    reads everything); otherwise the first word is the filter and the rule is readwrite.
    """
    if not words or _is_comment(words, 0):
        raise ValueError("expected a topic filter, e.g. 'topic read sensors/#'")
    if words[0] == _DENY and len(words) >= 2:
        return AclRule(Access.READWRITE, words[1], number, deny=True), 2
    access = _ACCESS_WORDS.get(words[0])
    if access is not None and len(words) >= 2:
        return AclRule(access, words[1], number), 2
    if len(words) >= 2 and not _is_comment(words, 1) and words[0].isalpha():
        raise ValueError(
            f"unknown access {words[0]!r} (allowed: read, write, readwrite, deny; "
            "without one the rule grants readwrite)"
        )
    return AclRule(Access.READWRITE, words[0], number), 1


def _is_comment(words: list[str], index: int) -> bool:
    return words[index].startswith("#")


@attrs.frozen
class AclFile:
    """The rules of an ACL file.

    - ``topic`` lines before the first ``user`` line apply to every client, anonymous
      or not; with ``global_rules_anonymous_only`` (mosquitto's meaning) to clients
      without a username only;
    - ``topic`` lines after ``user NAME`` apply to clients with that username;
    - ``pattern`` lines apply to every client, wherever they are, with ``%u`` replaced by
      the username and ``%c`` by the client id.
    - ``address`` lines say where clients may connect from (their real address, as a
      PROXY header tells it): before the first ``user`` line for every client, after
      ``user NAME`` for that username, on top of the lines for every client.

    A ``deny`` rule that applies to a client wins over every grant: whatever it matches
    (whatever filter it covers, for a subscription) is denied. Whatever no rule grants is
    denied too; without ``address`` lines any address may connect.
    """

    source: str
    global_rules: tuple[AclRule, ...] = ()
    user_rules: Mapping[str, tuple[AclRule, ...]] = attrs.field(factory=dict)
    patterns: tuple[AclRule, ...] = ()
    global_networks: tuple[IPNetwork, ...] = ()
    user_networks: Mapping[str, tuple[IPNetwork, ...]] = attrs.field(factory=dict)
    #: mosquitto's meaning: the rules before the first ``user`` line (``global_rules``)
    #: apply to clients without a username only (``acl_topics_before_user = "anonymous"``)
    global_rules_anonymous_only: bool = False
    _patterns: tuple[_Pattern, ...] = attrs.field(init=False, repr=False)
    _has_deny: bool = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = []
        for rule in self.patterns:
            uses_username, uses_client_id = _check_placeholders(rule.topic_filter)
            compiled.append(_Pattern(rule, uses_username, uses_client_id))
        object.__setattr__(self, "_patterns", tuple(compiled))
        every_rule = [*self.global_rules, *self.patterns]
        for rules in self.user_rules.values():
            every_rule += rules
        object.__setattr__(self, "_has_deny", any(rule.deny for rule in every_rule))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, global_rules_anonymous_only: bool = False
    ) -> AclFile:
        """Read and check an ACL file; ``ConfigError`` names the file and line."""
        return cls.parse(
            read_text(path, "ACL file"),
            source=str(path),
            global_rules_anonymous_only=global_rules_anonymous_only,
        )

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        source: str = "<ACL file>",
        global_rules_anonymous_only: bool = False,
    ) -> AclFile:
        """Build from the text of an ACL file (*source* names it in errors)."""
        builder = _AclBuilder()
        for number, line in content_lines(text):
            try:
                builder.add_line(line, number)
            except ValueError as exc:
                raise ConfigError(f"line {number}: {exc}", file=source) from None
        return cls(
            source=source,
            global_rules=tuple(builder.rules[None]),
            user_rules={
                name: tuple(rules) for name, rules in builder.rules.items() if name is not None
            },
            patterns=tuple(builder.patterns),
            global_networks=tuple(builder.networks.get(None, ())),
            user_networks={
                name: tuple(nets) for name, nets in builder.networks.items() if name is not None
            },
            global_rules_anonymous_only=global_rules_anonymous_only,
        )

    def can_connect_from(self, username: str | None, host: str | None) -> bool:
        """Whether the ``address`` lines let a client with *username* connect from *host*."""
        if self.global_networks and not address_in(host, self.global_networks):
            return False
        networks = None if username is None else self.user_networks.get(username)
        return not networks or address_in(host, networks)

    def rules_for(self, username: str | None, client_id: str) -> Iterator[AclRule]:
        """Every rule that applies to one client, patterns already substituted."""
        if username is None or not self.global_rules_anonymous_only:
            yield from self.global_rules
        if username is not None:
            yield from self.user_rules.get(username, ())
        for pattern in self._patterns:
            rule = pattern.expand(username, client_id)
            if rule is not None:
                yield rule

    def _allows(
        self,
        username: str | None,
        client_id: str,
        access: Access,
        applies: Callable[[str], bool],
    ) -> bool:
        """Whether a rule grants *access* where *applies* and no deny rule takes it away."""
        granted = False
        for rule in self.rules_for(username, client_id):
            if rule.denies(access):
                if applies(rule.topic_filter):
                    return False
            elif not granted and rule.grants(access) and applies(rule.topic_filter):
                if not self._has_deny:
                    return True
                granted = True
        return granted

    def can_publish(self, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a rule granting write matches *topic* and no deny rule does."""
        return self._allows(
            username, client_id, Access.WRITE, lambda rule: topic_matches(rule, topic)
        )

    def can_read(self, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a rule granting read matches *topic* (a message about to be delivered)
        and no deny rule does."""
        return self._allows(
            username, client_id, Access.READ, lambda rule: topic_matches(rule, topic)
        )

    def can_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """Whether a rule granting read covers all of *topic_filter* and no deny rule does.

        A filter that only overlaps a deny rule (``#`` while ``secret`` is denied) is
        allowed: ``can_read`` keeps the denied topics' messages from being delivered.
        A shared subscription is checked without its ``$share/<group>/`` prefix.
        """
        try:
            _group, plain = parse_shared_filter(topic_filter)
        except RemoteProtocolError:
            return False
        return self._allows(
            username, client_id, Access.READ, lambda rule: filter_covers(rule, plain)
        )


@attrs.define
class _AclBuilder:
    """The sections of an ACL file as its lines are read (None: before any ``user``)."""

    rules: dict[str | None, list[AclRule]] = attrs.Factory(lambda: {None: []})
    networks: dict[str | None, list[IPNetwork]] = attrs.Factory(dict)
    patterns: list[AclRule] = attrs.Factory(list)
    user: str | None = None

    def add_line(self, line: str, number: int) -> None:
        keyword, *words = line.split()
        if keyword == "user":
            if not words or _is_comment(words, 0):
                raise ValueError("'user' needs a username, e.g. 'user alice'")
            used = 1
            self.user = words[0]
            self.rules.setdefault(self.user, [])
        elif keyword in ("topic", "pattern"):
            rule, used = _parse_rule(words, number)
            if keyword == "pattern":
                _check_placeholders(rule.topic_filter)
                _check_filter(_substitute(rule.topic_filter, {"u": "u", "c": "c"}))
                self.patterns.append(rule)
            else:
                _check_filter(rule.topic_filter)
                self.rules[self.user].append(rule)
        elif keyword == "address":
            used = next((i for i, word in enumerate(words) if word.startswith("#")), len(words))
            if not used:
                raise ValueError("'address' needs a network, e.g. 'address 10.0.0.0/8'")
            networks = self.networks.setdefault(self.user, [])
            networks.extend(parse_network(word) for word in words[:used])
        else:
            raise ValueError(
                f"unknown keyword {keyword!r} (allowed: topic, user, pattern, address)"
            )
        if len(words) > used and not _is_comment(words, used):
            raise ValueError(
                f"unexpected {' '.join(words[used:])!r} after the rule "
                "(topic filters cannot contain spaces; comments start with '#')"
            )
