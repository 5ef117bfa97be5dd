"""Glue from the configuration to the security pieces: TLS, access rules, user identity, audit.

:class:`~gateway.service.GatewayService` calls these builders so that it
stays a list of wiring steps; each takes validated configuration
(:mod:`gateway.config.schema`) and returns the live object of
:mod:`gateway.tls`, :mod:`gateway.access`, :mod:`gateway.identity_check` or
:mod:`gateway.audit`.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from gateway.access import AccessPolicy, AccessRule, CalledAETitleRule, CallingAETitleRule, CertificateRule, NetworkRule
from gateway import events
from gateway.audit import AuditTrail, IAuditSink, JsonLinesFile, Outcome, Participant
from gateway.config.schema import DestinationTLSConfig, DicomWebDestination, GatewayConfig, ListenerConfig, ListenerTLSConfig
from gateway.identity_check import IdentityPolicy, PasscodePool, UserIdentityChecker, UsersFileError, load_users
from gateway.listen import printable
from gateway.tls import ClientTLSSettings, ServerTLS, ServerTLSSettings, TLSProfile, key_mode_problem

log = Logger(namespace="gateway.security")


def server_tls_settings(config: ListenerTLSConfig) -> ServerTLSSettings:
    """The :mod:`gateway.tls` settings of a listener's ``tls`` block.

    :param config: the block.
    :returns: the settings.
    """
    return ServerTLSSettings(
        certificate=config.certificate,
        private_key=config.private_key,
        ca=config.ca,
        require_client_certificate=config.require_client_certificate,
        profile=TLSProfile(config.profile),
        crl=config.crl,
    )


def client_tls_settings(config: DestinationTLSConfig) -> ClientTLSSettings:
    """The :mod:`gateway.tls` settings of a destination's ``tls`` block.

    :param config: the block.
    :returns: the settings.
    """
    return ClientTLSSettings(
        ca=config.ca,
        server_name=config.server_name,
        certificate=config.certificate,
        private_key=config.private_key,
        profile=TLSProfile(config.profile),
    )


def server_tls(listener: ListenerConfig) -> ServerTLS | None:
    """The reloadable TLS context of a listener, after checking its key file's mode (HARDENING T16).

    :param listener: the listener.
    :returns: ``None`` for a plain listener.
    :raises gateway.tls.TLSConfigError: when the files cannot be used.
    """
    if listener.tls is None:
        return None
    problem = key_mode_problem(listener.tls.private_key)
    if problem is not None:
        log.warn("listener {name}: {problem}", name=listener.name, problem=problem)
    return ServerTLS(server_tls_settings(listener.tls))


def listener_access(config: GatewayConfig, listener: ListenerConfig) -> AccessPolicy:
    """The access policy of one listener: the global ``accept`` rules, then the listener's own.

    :param config: the configuration (our AE title, the global calling AE titles).
    :param listener: the listener.
    :returns: the policy.
    """
    extra: list[AccessRule] = []
    access = listener.access
    if access.calling_ae_titles:
        extra.append(CallingAETitleRule(tuple(pattern.strip(" ") for pattern in access.calling_ae_titles)))
    if access.networks:
        extra.append(NetworkRule(access.networks))
    if access.certificates:
        extra.append(CertificateRule.from_config(access.certificates))
    return AccessPolicy(config.ae_title, config.accept.calling_ae_titles, extra)


def listener_identity(
    listener: ListenerConfig, verifiers: dict[int, Any] | None = None, passcodes: PasscodePool | None = None
) -> UserIdentityChecker | None:
    """The user identity checker of one listener.

    :param listener: the listener.
    :param verifiers: assertion verifier plugins by identity type (types 3-5);
        by default the plugins ``user_identity.verifiers`` names.
    :param passcodes: the gateway's pool for scrypt checks (shared by every
        listener, so all of them together use at most its workers); checks
        run at once on the caller's thread without one.
    :returns: ``None`` when the policy is ``off``.
    :raises UsersFileError: when the users file cannot be read, or a verifier plugin is missing.
    """
    settings = listener.user_identity
    if settings.policy == "off":
        return None
    users = load_users(settings.users_file) if settings.users_file else {}
    found = dict(verifiers or {})
    if settings.verifiers and verifiers is None:
        found = _verifier_plugins(dict(settings.verifiers))
    return UserIdentityChecker(IdentityPolicy(settings.policy), users, found, passcodes)


def _verifier_plugins(wanted: dict[int, str]) -> dict[int, Any]:
    """Find the user identity verifier plugins a listener names, by identity type.

    The configuration loader has already run plugin discovery
    (:func:`gateway.plugins.discover`) and refused unknown names; this looks
    them up again through :mod:`gateway.dropins`.

    :param wanted: ``{identity type: plugin name}``.
    :returns: ``{identity type: plugin}``.
    :raises UsersFileError: naming a plugin that is not installed.
    """
    from gateway.interfaces import IUserIdentityVerifier
    from gateway.plugins import providers

    # Only the configured plugin folders, as loaded with the configuration (no twisted getPlugins).
    available = {getattr(plugin, "name", ""): plugin for plugin in providers(IUserIdentityVerifier)}
    missing = sorted(name for name in wanted.values() if name not in available)
    if missing:
        raise UsersFileError(f"user identity verifier plugin(s) not found: {', '.join(missing)}")
    return {kind: available[name] for kind, name in wanted.items()}


def build_audit(
    config: GatewayConfig,
    wall: Callable[[], float],
    extra_sinks: list[IAuditSink] | None = None,
    reactor: Any = None,
    registry: Any = None,
) -> AuditTrail:
    """The audit trail the configuration asks for: the JSON-lines file, and syslog over TLS.

    :param config: the configuration.
    :param wall: wall-clock time.
    :param extra_sinks: further sinks (tests).
    :param reactor: needed for syslog, and the clock of the aggregated
        refusals (HARDENING H11); without it syslog is not started and nothing
        is aggregated.
    :param registry: the metrics registry (syslog's dropped-records counter).
    :returns: the trail; without a file it still counts records.
    :raises gateway.tls.TLSConfigError: when the syslog TLS files cannot be used.
    """
    sinks: list[IAuditSink] = list(extra_sinks or [])
    if config.audit.file:
        sinks.append(JsonLinesFile(config.audit.file, config.audit.rotate.size, config.audit.rotate.keep))
    trail = AuditTrail(sinks, ae_title=config.ae_title, wall=wall, clock=reactor)
    syslog = config.audit.syslog
    if syslog.host and reactor is not None:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        from gateway.sinks import SyslogTLSSink
        from gateway.tls import client_creator

        # RFC 5425: syslog over TLS, the server verified like a destination.
        creator = client_creator(
            ClientTLSSettings(syslog.ca, syslog.server_name, syslog.certificate, syslog.private_key), syslog.host
        )
        endpoint = wrapClientTLS(creator, HostnameEndpoint(reactor, syslog.host, syslog.port, timeout=10))
        sink = SyslogTLSSink(reactor, endpoint, trail.hostname, registry=registry)
        sink.start()
        trail.sinks.append(sink)
    return trail


__all__ = [
    "AuditObserver",
    "CalledAETitleRule",
    "UsersFileError",
    "build_audit",
    "client_tls_settings",
    "listener_access",
    "listener_identity",
    "server_tls",
    "server_tls_settings",
]


class AuditObserver:
    """The audit sink of the gateway's events (:mod:`gateway.events`): each event the audit trail records becomes its record.

    Associations accepted and rejected, user identity outcomes and failed TLS
    handshakes (but a silent close) become their records; an admitted
    instance is recorded by :func:`audit_admission`. Delivered instances
    become DICOM Instances Transferred records (action R, we are the source;
    PS3.15 A.5.3.7) or, for folder destinations, Data Export records
    (A.5.3.5); dead-lettered ones the same record with a serious-failure
    outcome and the reason; a destination's TLS fault a Security Alert
    (HARDENING F20). Storage Commitment (issue 15): each request answered,
    each report delivered or given up (a failed attempt that will be retried
    is not audited: the metrics count it) and each archive's report
    (see :meth:`AuditTrail.commitment_request`). Query/Retrieve (issue 16):
    each C-FIND answered (:meth:`AuditTrail.query`) and each C-MOVE/C-GET
    answered (:meth:`AuditTrail.retrieve`). Other events are not audited.

    :param audit: the audit trail.
    :param destinations: returns the current destination configuration by name.
    :param modalities: returns the current ``modalities`` table by name (a report's addressee).
    """

    def __init__(
        self,
        audit: AuditTrail,
        destinations: Callable[[], dict[str, Any]] = dict,
        modalities: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._audit = audit
        self._destinations = destinations
        self._modalities = modalities

    def observe(self, event: events.Event) -> None:
        """Write the audit record of ``event``, if it has one."""
        audit = self._audit
        if isinstance(event, events.AssociationAccepted):
            audit.association_accepted(
                peer=event.peer,
                calling_ae_title=printable(event.calling_ae_title),
                called_ae_title=printable(event.called_ae_title),
                listener=event.listener,
                certificate_subject=event.certificate_subject,
                username=printable(event.username),
            )
        elif isinstance(event, events.AssociationRejected):
            audit.association_rejected(
                peer=event.peer,
                calling_ae_title=printable(event.calling_ae_title),
                called_ae_title=printable(event.called_ae_title),
                listener=event.listener,
                reason=event.reason,
                rejection=event.rejection,
                certificate_subject=event.certificate_subject,
            )
        elif isinstance(event, events.UserAuthenticated):
            audit.user_authentication(
                peer=event.peer,
                calling_ae_title=printable(event.calling_ae_title),
                username=printable(event.username),
                identity_type=event.identity_type,
                success=event.success,
                description=event.description,
                listener=event.listener,
            )
        elif isinstance(event, events.TLSHandshakeFailed):
            # Security Alert for every failed handshake but a silent close.
            if event.reason != "closed":
                audit.tls_failure(peer=event.peer, listener=event.listener, reason=event.reason, detail=event.detail)
        elif isinstance(event, events.ProxyRefused):
            audit.proxy_refused(peer=event.peer, listener=event.listener, reason=event.reason, detail=event.detail)
        elif isinstance(event, events.InstanceAdmitted):
            audit_admission(audit, event.admission, event.spooled, event.info)
        elif isinstance(event, events.Delivered):
            self._record(event.entry, "forwarded", Outcome.SUCCESS, event.warning)
        elif isinstance(event, events.DeadLettered):
            self._record(event.entry, "dead_letter", Outcome.SERIOUS_FAILURE, event.detail)
        elif isinstance(event, events.DestinationFault):
            self._destination_fault(event.destination, event.reason, event.tls_failure)
        elif isinstance(event, events.CommitmentRequested):
            audit.commitment_request(
                peer=event.peer,
                calling_ae_title=printable(event.calling_ae_title),
                called_ae_title="",
                listener=event.listener,
                transaction_uid=printable(event.transaction_uid),
                outcome=event.outcome,
                status=event.status,
                instances=event.instances,
                reason=printable(event.reason),
            )
        elif isinstance(event, events.CommitmentReportSent):
            self._commitment_report(event.transaction_uid, event.modality, event.calling_ae_title, event.policy,
                                    event.committed, event.failed, event.attempts)
        elif isinstance(event, events.CommitmentReportFailed):
            if event.dead:
                self._commitment_report(event.transaction_uid, event.modality, "", "", 0, 0, event.attempt,
                                        dead=True, error=printable(event.error))
        elif isinstance(event, events.QueryAnswered):
            audit.query(
                peer=event.peer,
                calling_ae_title=printable(event.calling_ae_title),
                listener=event.listener,
                sop_class_uid=printable(event.sop_class_uid),
                identifier=event.identifier,
                transfer_syntax=printable(event.transfer_syntax),
                level=printable(event.level),
                outcome=event.outcome,
                status=event.status,
                results=event.results,
                failed_sources=event.failed_sources,
                reason=printable(event.reason),
            )
        elif isinstance(event, events.RetrieveAnswered):
            self._retrieve(event)
        elif isinstance(event, events.ArchiveCommitmentReported):
            destination = self._destinations().get(event.destination)
            audit.archive_commitment_report(
                destination=event.destination,
                calling_ae_title=printable(event.calling_ae_title),
                address=f"{destination.host}:{destination.port}" if destination is not None and hasattr(destination, "host") else "",
                transaction_uid=printable(event.transaction_uid),
                committed=event.committed,
                failed=event.failed,
                status=event.status,
            )

    def _retrieve(self, event: events.RetrieveAnswered) -> None:
        """Audit a C-MOVE/C-GET answered; a move destination is addressed as the ``modalities`` table gives it."""
        destination: Participant | None = None
        if event.verb == "move":
            entry = self._modalities().get(event.destination) if event.destination else None
            destination = Participant(
                user_id=entry.ae_title if entry is not None else printable(event.move_destination),
                role="Destination Role ID",
                network_access_point=f"{entry.host}:{entry.port}" if entry is not None else "",
                alternative_user_id=event.destination,
            )
        self._audit.retrieve(
            peer=event.peer,
            calling_ae_title=printable(event.calling_ae_title),
            listener=event.listener,
            verb=event.verb,
            sop_class_uid=printable(event.sop_class_uid),
            outcome=event.outcome,
            status=event.status,
            completed=event.completed,
            failed=event.failed,
            warning=event.warning,
            destination=destination,
            study_uids=tuple(printable(uid) for uid in event.study_uids),
            failed_uids=event.failed_uids,
            sources=event.sources,
            reason=printable(event.reason),
        )

    def _commitment_report(
        self,
        transaction_uid: str,
        modality: str,
        ae_title: str,
        policy: str,
        committed: int,
        failed: int,
        attempts: int,
        dead: bool = False,
        error: str = "",
    ) -> None:
        """Audit a report delivered or given up, addressed as the ``modalities`` table gives its requester."""
        entry = self._modalities().get(modality)
        self._audit.commitment_report(
            transaction_uid=printable(transaction_uid),
            modality=modality,
            ae_title=printable(ae_title) or (entry.ae_title if entry is not None else ""),
            address=f"{entry.host}:{entry.port}" if entry is not None else "",
            policy=policy,
            committed=committed,
            failed=failed,
            attempts=attempts,
            dead=dead,
            error=error,
        )

    def _record(self, entry: Any, disposition: str, outcome: Outcome, description: str) -> None:
        from gateway.config.schema import NOTIFICATION_SINKS  # issue 18 (notify)

        destination = self._destinations().get(entry.destination)
        folder = destination is not None and hasattr(destination, "path") and not hasattr(destination, "ae_title")
        if destination is None:
            target = Participant(user_id=entry.destination, role="Destination Role ID")
        elif isinstance(destination, DicomWebDestination):
            # Issue 17: the STOW-RS service's URL, its query left out (it may carry a key).
            target = Participant(
                user_id=entry.destination, role="Destination Role ID", network_access_point=destination.url.split("?", 1)[0]
            )
        elif folder:
            target = Participant(user_id=entry.destination, role="Destination Role ID", network_access_point=destination.path)
        elif isinstance(destination, NOTIFICATION_SINKS):
            # Issue 18 (notify): a study notification leaves the DICOM world for a RIS, a pipeline...
            # (with the patient's identity when the sink allows PHI): audited as Data Export
            # (PS3.15 A.5.3.5), not DICOM Instances Transferred (no instance is transferred).
            # The URL's query is left out (it may carry a key).
            folder = True
            point = getattr(destination, "url", "").split("?", 1)[0] or f"{getattr(destination, 'host', '')}:{getattr(destination, 'port', '')}"
            target = Participant(user_id=entry.destination, role="Destination Role ID", network_access_point=point)
        else:
            target = Participant(
                user_id=destination.ae_title,
                role="Destination Role ID",
                network_access_point=f"{destination.host}:{destination.port}",
                alternative_user_id=entry.destination,
            )
        instance = entry.instance
        self._audit.instance(
            "exported" if folder and disposition == "forwarded" else disposition,
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            study_uid=instance.study_instance_uid,
            patient_id=instance.patient_id,
            source=self._audit.us("source"),
            destination=target,
            outcome=outcome,
            description=description,
            extra={"destination": entry.destination, "route": entry.route, "correlation_id": instance.correlation_id},
        )

    def _destination_fault(self, name: str, reason: str, label: str | None) -> None:
        """Audit a TLS failure of a destination as a Security Alert (HARDENING F20); other faults are not audited.

        :param name: the destination.
        :param reason: the fault's text, for the record's detail.
        :param label: the TLS failure's label, decided where the error was classified; ``None`` for other faults.
        """
        destination = self._destinations().get(name)
        if label is not None and destination is not None:
            self._audit.tls_destination_failure(
                destination=name,
                ae_title=getattr(destination, "ae_title", ""),
                address=f"{getattr(destination, 'host', '')}:{getattr(destination, 'port', '')}",
                reason=label,
                detail=reason,
            )


def audit_received(audit: AuditTrail, report: Any, peer: str = "") -> None:
    """Audit one received instance (DICOM Instances Transferred, action C; PS3.15 A.5.3.7).

    Only committed instances are recorded as received; a refused C-STORE is
    the modality's to retry and leaves no instance behind.

    :param audit: the audit trail.
    :param report: the :class:`~gateway.receive.InstanceReport`.
    :param peer: the sender's address, when known.
    """
    spooled = report.spooled
    if spooled is None:
        return
    summary = spooled.summary
    audit.instance(
        "received",
        sop_instance_uid=report.sop_instance_uid,
        sop_class_uid=report.sop_class_uid,
        study_uid=summary.study_instance_uid or "",
        patient_id=summary.patient_id or "",
        source=Participant(
            user_id="".join(c if " " <= c <= "~" else "?" for c in report.calling_ae_title),
            role="Source Role ID",
            network_access_point=peer,
            requestor=True,
        ),
        destination=audit.us("destination"),
        extra={"correlation_id": report.correlation_id} if report.correlation_id else None,
    )


def audit_admission(audit: AuditTrail, admission: Any, spooled: Any, info: Any) -> Any:
    """Audit one instance as the intake admitted it: received, and dropped when a drop route took it.

    Called with the intake's :class:`~gateway.intake.Admission` once the
    instance is journaled (before the C-STORE response), with the
    association's peer address and TLS subject at hand. An instance a route
    rejected (a failure status to the modality) is not received: it is left
    out, and the modality keeps its copy.

    :param audit: the audit trail.
    :param admission: the intake's answer.
    :param spooled: the :class:`~gateway.spool.SpooledInstance`.
    :param info: the :class:`~gateway.receive.AssociationInfo`.
    :returns: ``admission``, unchanged (a Deferred callback).
    """
    status = getattr(admission, "status", 0)
    if status not in (0x0000, 0x0001, 0x0107, 0x0116) and not 0xB000 <= status <= 0xBFFF:
        return admission
    summary = spooled.summary
    calling = "".join(c if " " <= c <= "~" else "?" for c in info.calling_ae_title.strip(" "))
    source = Participant(
        user_id=calling,
        role="Source Role ID",
        network_access_point=info.peer_address,
        requestor=True,
        certificate_subject=info.tls_subject,
    )
    common = dict(
        sop_instance_uid=summary.sop_instance_uid or "",
        sop_class_uid=summary.sop_class_uid or "",
        study_uid=summary.study_instance_uid or "",
        patient_id=summary.patient_id or "",
    )
    extra = {"listener": info.listener}
    correlation = getattr(admission, "correlation_id", "")
    if correlation:
        extra["correlation_id"] = correlation
    audit.instance("received", source=source, destination=audit.us("destination"), extra=extra, **common)
    if getattr(admission, "dropped", False):
        matched = ", ".join(getattr(admission, "matched", ()))
        audit.instance(
            "dropped",
            source=audit.us("source"),
            destination=Participant(user_id="", role="Destination Role ID"),
            outcome=Outcome.SUCCESS,
            description=f"dropped by route(s) {matched}" if matched else "dropped by a drop route",
            extra=extra,
            **common,
        )
    return admission


def dicomweb_material(destination: DicomWebDestination) -> list[str]:
    """The problems of a DICOMweb destination's files: its secret files readable, its TLS material usable (issue 17).

    A secret file is opened, never shown: the problem names the file only.

    :param destination: the destination.
    :returns: one line per problem.
    """
    from urllib.parse import urlsplit

    from gateway.tls import TLSConfigError, client_creator

    problems: list[str] = []
    auth = destination.auth
    for key in ("password_file", "token_file", "client_secret_file"):
        path = getattr(auth, key)
        if not path:
            continue
        try:
            with open(path, "rb") as handle:
                if not handle.read(65537).strip():
                    problems.append(f"auth.{key} {path} is empty")
        except OSError as error:
            problems.append(f"auth.{key}: cannot read {path}: {error.strerror or type(error).__name__}")
    tls = destination.tls
    if tls.ca:
        try:
            client_creator(
                ClientTLSSettings(tls.ca, "", tls.certificate, tls.private_key), urlsplit(destination.url).hostname or ""
            )
        except TLSConfigError as error:
            problems.append(str(error))
    return problems


def check_material(config: GatewayConfig) -> list[str]:
    """Try every certificate, key, CA and users file the configuration names (for ``run`` and ``check``).

    The loader checks the shape of the configuration; this opens the files,
    so a missing certificate or a key that does not match is reported as
    one line per problem instead of a traceback at start-up.

    :param config: the validated configuration.
    :returns: the problems, empty when every file is usable.
    """
    from gateway.tls import TLSConfigError, client_creator

    problems: list[str] = []
    for listener in config.listen:
        try:
            server_tls(listener)
        except TLSConfigError as error:
            problems.append(f"listener {listener.name}: {error}")
        try:
            listener_identity(listener)
        except UsersFileError as error:
            problems.append(f"listener {listener.name}: {error}")
    for destination in config.destinations:
        if isinstance(destination, DicomWebDestination):
            problems += [f"destination {destination.name}: {p}" for p in dicomweb_material(destination)]
            continue
        # Issue 18 (notify): webhook and FHIR sinks have a DICOMweb destination's url, auth and tls.
        from gateway.config.schema import FhirSink, WebhookSink

        if isinstance(destination, (WebhookSink, FhirSink)):
            problems += [f"destination {destination.name}: {p}" for p in dicomweb_material(destination)]  # type: ignore[arg-type]
            secret = getattr(destination, "secret_file", "")
            if secret:
                try:
                    with open(secret, "rb") as handle:
                        if not handle.read(65537).strip():
                            problems.append(f"destination {destination.name}: webhook.secret_file {secret} is empty")
                except OSError as error:
                    problems.append(f"destination {destination.name}: webhook.secret_file: cannot read {secret}: "
                                    f"{error.strerror or type(error).__name__}")
            continue
        tls = getattr(destination, "tls", None)
        if tls is None:
            continue
        try:
            client_creator(client_tls_settings(tls), destination.host)  # type: ignore[union-attr]
        except TLSConfigError as error:
            problems.append(f"destination {destination.name}: {error}")
    syslog = config.audit.syslog
    if syslog.host:
        try:
            client_creator(ClientTLSSettings(syslog.ca, syslog.server_name, syslog.certificate, syslog.private_key), syslog.host)
        except TLSConfigError as error:
            problems.append(f"audit syslog: {error}")
    return problems
