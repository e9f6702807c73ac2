"""The one exception tree of hcbpg; every error tells the operator what to do next.

    HcbpgError                      base: ``str(exc)`` is one clear paragraph
    ├── ParamsError                 bad or contradictory params (exit 2)
    ├── SecretError                 a secret reference cannot be resolved (exit 2)
    ├── UsageError                  bad command-line input, unknown run or step (exit 2)
    ├── RemoteCommandError          a command on a host failed (host, command, exit code, output tail)
    ├── HostUnreachable             SSH cannot reach a host
    ├── HostKeyError                a host offered an SSH host key that is not pinned for it (refused)
    ├── DatabaseError               a PostgreSQL operation failed (wraps psycopg errors)
    ├── CloudError                  a Hetzner Cloud API call failed (wraps hcloud errors)
    ├── PgBackRestError             pgBackRest failed (its own error code and message)
    ├── SafetyCheckFailed           a destructive action was refused: preconditions not met
    ├── VerificationFailed          a check after a change did not pass (names what failed)
    ├── WaitTimeout                 polling gave up at its deadline
    ├── GateRequired                a manual approval gate is not yet approved (exit 3 headless)
    ├── AuditError                  the audit trail does not verify (names the first bad file)
    └── LabError                    the rehearsal lab cannot be built or torn down
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


#: scrubs a command's output before RemoteCommandError cuts it to its tail (set by hcbpg.secrets when
#: it is imported: errors imports nothing of ours).  Scrubbing after the cut would miss a secret the
#: cut went through, leaving its tail readable.
def _unfiltered(text: str) -> str:
    return text


_output_filter: Callable[[str], str] = _unfiltered


def set_output_filter(scrub: Callable[[str], str]) -> None:
    global _output_filter
    _output_filter = scrub


class HcbpgError(Exception):
    """Base of every error hcbpg raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class ParamsError(HcbpgError):
    """Params do not validate; ``problems`` lists each one with its key."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) in params, nothing was run:\n{lines}",
            hint="Fix the params file and run `hcbpg params check ENV` again.",
        )


class SecretError(HcbpgError):
    exit_code = 2


class UsageError(HcbpgError):
    exit_code = 2


class RemoteCommandError(HcbpgError):
    """A command on a host exited non-zero (secrets already scrubbed from every field)."""

    def __init__(self, host: str, command: str, exit_code: int | None, output_tail: str,
                 *, hint: str | None = None) -> None:
        self.host = host
        self.command = command
        self.exit_status = exit_code
        output_tail = _output_filter(output_tail)[-4000:]
        self.output_tail = output_tail
        tail = "\n".join("    " + line for line in output_tail.rstrip().splitlines()[-20:])
        super().__init__(
            f"on {host}: command failed with exit code {exit_code}: {command}\n{tail}",
            hint=hint,
        )


class HostUnreachable(HcbpgError):
    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        super().__init__(
            f"cannot reach host {host} ({address}) over SSH: {reason}",
            hint="Check that the server is up, that its address in params is right and that "
                 "your SSH key is authorized; nothing was changed on any host.",
        )


class HostKeyError(HcbpgError):
    """A machine offered an SSH host key that is not the one pinned for it: nothing was sent to it.

    *expected* lists the pinned fingerprints (empty: none pinned), *offered* the key it showed."""

    def __init__(self, host: str, address: str, known_hosts: str, *, expected: Sequence[str],
                 offered: str) -> None:
        self.host = host
        self.address = address
        self.known_hosts = known_hosts
        self.expected = list(expected)
        self.offered = offered
        if self.expected:
            what = (f"SSH host key of {host} ({address}) does not match its pin: expected "
                    f"{' or '.join(self.expected)}, offered {offered}; refused before any command ran")
            hint = (f"Do not connect until you know why the key changed (a rebuilt server, or someone else "
                    f"answering at {address}). If the server was rebuilt on purpose, compare {offered} with the "
                    f"fingerprint in the Hetzner console (server -> Console, the cloud-init output), remove "
                    f"{host}'s line from {known_hosts} and run step 01 again: it asks you to confirm the new key.")
        else:
            what = (f"SSH host key of {host} ({address}) is unknown: no key is pinned for {host} in "
                    f"{known_hosts} (expected: a pinned key, none recorded), offered {offered}; refused before "
                    "any command ran")
            hint = ("Run step 01 (provision): it pins the keys of the servers it creates, and for an existing "
                    "server it shows the offered fingerprint and asks you to confirm it against the Hetzner "
                    "console before pinning it.")
        super().__init__(what, hint=hint)


class DatabaseError(HcbpgError):
    """A PostgreSQL operation failed: on which host, in which database, which statement, and
    PostgreSQL's SQLSTATE when it gave one (secrets already scrubbed from every field)."""

    def __init__(self, message: str, *, host: str | None = None, database: str | None = None,
                 statement: str | None = None, sqlstate: str | None = None, hint: str | None = None) -> None:
        self.host = host
        self.database = database
        self.statement = statement
        self.sqlstate = sqlstate
        super().__init__(message, hint=hint)


class CloudError(HcbpgError):
    """A Hetzner Cloud API call failed; *code* is the API's error code (``uniqueness_error``, ...) when it gave one."""

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        self.code = code
        super().__init__(message, hint=hint)


class PgBackRestError(HcbpgError):
    def __init__(self, message: str, *, code: int | None = None, host: str | None = None,
                 hint: str | None = None) -> None:
        self.code = code
        self.host = host
        super().__init__(message, hint=hint)


class PatroniError(HcbpgError):
    """Patroni's REST API answered an error (or nothing): *status* is the HTTP status (0: no answer), *host* the
    member asked, *body* what it said (scrubbed)."""

    def __init__(self, message: str, *, status: int = 0, host: str | None = None, body: str = "",
                 hint: str | None = None) -> None:
        self.status = status
        self.host = host
        self.body = body
        super().__init__(message, hint=hint)


class EtcdError(HcbpgError):
    """etcd did not do what hcbpg asked (a member unhealthy, no quorum, auth refused); *host* ran etcdctl."""

    def __init__(self, message: str, *, host: str | None = None, hint: str | None = None) -> None:
        self.host = host
        super().__init__(message, hint=hint)


class SafetyCheckFailed(HcbpgError):
    """A destructive or risky action was refused; *target* is the machine or object it would
    have changed, *reasons* each precondition that did not hold."""

    def __init__(self, message: str, *, target: str | None = None, reasons: Sequence[str] = (),
                 hint: str | None = None) -> None:
        self.target = target
        self.reasons = list(reasons)
        super().__init__(message, hint=hint)


class VerificationFailed(HcbpgError):
    def __init__(self, message: str, *, failures: Sequence[str] = (), hint: str | None = None) -> None:
        self.failures = list(failures)
        super().__init__(message, hint=hint)


class WaitTimeout(HcbpgError):
    """Polling gave up: *what* was awaited, the *timeout*, how long it ran (*elapsed*) and the
    *last* value seen (see :func:`hcbpg.wait.wait_until`)."""

    def __init__(self, message: str, *, what: str | None = None, timeout: float | None = None,
                 elapsed: float | None = None, last: object = None, hint: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.elapsed = elapsed
        self.last = last
        super().__init__(message, hint=hint)


class GateRequired(HcbpgError):
    """Raised inside a headless notebook when a gate has no approval yet."""

    exit_code = 3

    def __init__(self, gate: str, question: str, run_id: str | None) -> None:
        self.gate = gate
        self.question = question
        self.run_id = run_id
        super().__init__(
            f"approval gate '{gate}' is waiting: {question}",
            hint=f"When it holds, run: hcbpg approve {run_id or 'RUN_ID'} {gate} --note '...'"
                 f" && hcbpg resume {run_id or 'RUN_ID'}",
        )


class AuditError(HcbpgError):
    pass


class LabError(HcbpgError):
    pass
