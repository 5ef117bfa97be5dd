"""Plugin interfaces: custom match predicates, morph actions and user identity verifiers.

Routes name plugins the way they name built-ins. A plugin is an object
providing one of these ``zope.interface`` interfaces, found by
:func:`gateway.plugins.discover` (module-level IPlugin providers, as
``getPlugins`` finds them) in the configured plugin folders only. A plugin module declares it as
Twisted plugins are declared::

    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from gateway.interfaces import IMatchPredicate

    @implementer(IPlugin, IMatchPredicate)
    class StudySize:
        name = "study_size"

        def compile(self, arguments):
            ...  # validate, raise ValueError on bad arguments
            return MinInstances(int(arguments["min_instances"]))

    study_size = StudySize()

and a route uses it with ``match: {plugin: study_size, min_instances: 3}``.

Interfaces for the other kinds of plugin (morph actions, user identity
verifiers) live in this module too.
"""

from __future__ import annotations

from typing import Any, Mapping

from zope.interface import Attribute, Interface


class IMatchPredicate(Interface):
    """A named factory of match predicates, usable in a route's ``match``.

    The object returned by :meth:`compile` must satisfy
    :class:`gateway.match.Predicate`: a frozen (hashable, comparable)
    dataclass with ``matches(dataset, context) -> bool`` and
    ``describe() -> str``. ``matches`` must never raise (HARDENING D17); a
    predicate that cannot decide answers ``False``.
    """

    name = Attribute("The plugin's name as routes write it (``plugin: NAME``), a str.")

    def compile(arguments: Mapping[str, Any]) -> Any:
        """Build a predicate from the route's arguments (every key but ``plugin``).

        :param arguments: the plain YAML values (str, int, float, bool, None,
            lists and mappings of them) given next to ``plugin``.
        :returns: a :class:`gateway.match.Predicate`.
        :raises ValueError: when the arguments are wrong; the message becomes a
            configuration error naming the line of the ``plugin`` key.
        """


class IMorphAction(Interface):
    """A named factory of morph actions, usable in a route's ``morph`` list.

    A route writes ``- {plugin: NAME, key: value, ...}``. The object returned by
    :meth:`compile` must have ``apply(dataset, context) -> list[gateway.morph.Change]``,
    changing the pydicom ``Dataset`` in place (header only) and raising
    :class:`gateway.morph.MorphError` for a failure on one instance (any other
    exception is wrapped into one). It should be a frozen dataclass (hashable,
    comparable) so a reload can compare routes. Optionally it has
    ``touches_tail: bool`` and ``drops_tail(tag) -> bool`` to remove
    elements stored after the pixel data.
    """

    name = Attribute("The plugin's name as routes write it (``plugin: NAME``), a str.")

    def compile(arguments: Mapping[str, Any]) -> Any:
        """Build an action from the route's arguments (every key but ``plugin``).

        :param arguments: the plain YAML values given next to ``plugin``.
        :returns: the action.
        :raises ValueError: when the arguments are wrong; the message becomes a
            configuration error naming the line of the action.
        """


class IUserIdentityVerifier(Interface):
    """A named checker of Kerberos tickets, SAML assertions or JSON Web Tokens (PS3.7 D.3.3.7).

    User identity types 3 (Kerberos), 4 (SAML) and 5 (JWT) are refused with
    A-ASSOCIATE-RJ (1, 1, 1) unless a listener names a verifier for that
    type in ``user_identity.verifiers`` (``{jwt: my_jwt}``) and the verifier
    accepts the identity. A verifier is declared like the other plugins::

        @implementer(IPlugin, IUserIdentityVerifier)
        class MyJWT:
            name = "my_jwt"

            def verify(self, identity):
                ...  # check identity.primary_field (the token)
                return Verdict(True, "subject", server_response=b"")

        my_jwt = MyJWT()

    ``verify`` runs on the reactor thread: it must not block. A verifier that
    needs the network or the disk returns a Deferred.
    """

    name = Attribute("The plugin's name as ``user_identity.verifiers`` writes it, a str.")

    def verify(identity: Any) -> Any:
        """Check one identity.

        :param identity: the 0x58 sub-item, a :class:`gateway.ul.items.UserIdentityRQ`
            (``identity_type``, ``primary_field``: the ticket, assertion or token,
            ``secondary_field``, ``positive_response_requested``).
        :returns: a :class:`gateway.identity_check.Verdict`, or a Deferred firing
            with one. Its ``server_response`` becomes the 0x59 sub-item's
            content when the requestor asked for a positive response. An
            exception, a failed Deferred or anything but a Verdict is a refusal.
        """
