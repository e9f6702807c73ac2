"""Secret references (``env:``, ``file:``, ``op://``) and the scrubber that keeps their values out of every output.

A secret is resolved inside the library at the moment it is used, never passed as a
papermill parameter.  Every resolved or generated value is registered with the process
scrubber and appended to the run's scrub registry (a 0600 file outside ``outputs/``,
named by ``HCBPG_SCRUB_FILE``) so that the runner, which writes the executed notebooks,
the manifest, the logs and the HTML, can remove it too.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import secrets as _stdlib_secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hcbpg import errors as _errors
from hcbpg.errors import SecretError

REDACTED = "[secret]"
MIN_SECRET_LENGTH = 8
SCRUB_FILE_ENV = "HCBPG_SCRUB_FILE"
#: every `op` call gives up after this long (a locked 1Password app or an approval prompt nobody sees)
OP_TIMEOUT_S = 60.0
_REF_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|op://[^/]+/[^/]+/.+)$")


def is_secret_ref(value: str) -> bool:
    """True when *value* has the shape of a secret reference."""
    return bool(_REF_RE.match(value))


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on *data* alone, wherever it starts in an encoded stream.

    A value that starts 0, 1 or 2 bytes into a 3-byte group encodes to three different strings;
    the characters it shares with its neighbours (at both ends) depend on them, so they are left out."""
    out = set()
    for pad in range(3):
        start = (pad * 8 + 5) // 6                  # first character made of the value's bits only
        end = ((pad + len(data)) * 8) // 6          # past the last such character
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            out.add(enc(b"\0" * pad + data).decode()[start:end])
    return out


#: a %XX escape with upper-case hex digits: its letters match in either case (``%2F``, ``%2f``): encoders differ
_PCT_ESCAPE = re.compile(r"%([0-9A-F])([0-9A-F])")


#: a hex letter of a %XX escape, which matches in either case, is this far into Unicode's private use planes
_EITHER_CASE = 0xF0000


def _encode(value: str) -> str:
    """*value* with each hex letter of its %XX escapes as a private-use character standing for both its cases."""
    chars = list(value)
    for m in _PCT_ESCAPE.finditer(value):
        for g in (1, 2):
            if m.group(g).isalpha():
                chars[m.start(g)] = chr(_EITHER_CASE + ord(m.group(g)))
    return "".join(chars)


def _matches(c: str) -> frozenset[str]:
    """The characters an encoded character *c* matches in a text."""
    if ord(c) < _EITHER_CASE:
        return frozenset(c)
    letter = chr(ord(c) - _EITHER_CASE)
    return frozenset((letter, letter.lower()))


def _char_class(cs: frozenset[str]) -> str:
    return re.escape(next(iter(cs))) if len(cs) == 1 else "[" + "".join(re.escape(c) for c in sorted(cs)) + "]"


def _radix_regex(strings: list[str]) -> str:
    """A regex for *strings* (encoded, sorted, distinct; ``""`` among them: a value may end here) that matches
    the longest it can: what all share is plain text, and each choice (a value ending here, or the next
    character) a group whose branches never take the same character (``[Aa]`` beside ``a``: ``a`` leads to both
    branches' strings, ``A`` to one), so the regex never has to choose.  Recursion only at choices."""
    ends = strings[0] == ""
    rest = strings[1:] if ends else strings
    if not rest:
        return ""
    if not ends:
        first, last = rest[0], rest[-1]  # sorted: what these two share, all share
        n = len(os.path.commonprefix([first, last]))
        if n:
            return "".join(_char_class(_matches(c)) for c in first[:n]) + _radix_regex([s[n:] for s in rest])
    by_first: dict[str, list[str]] = {}
    for s in rest:
        by_first.setdefault(s[0], []).append(s[1:])
    sets = {c: _matches(c) for c in by_first}
    chars = frozenset().union(*sets.values())
    if len(chars) == sum(len(v) for v in sets.values()):
        branches = [(sets[c], tails) for c, tails in by_first.items()]
    else:
        by_signature: dict[tuple[str, ...], set[str]] = {}
        for ch in chars:
            by_signature.setdefault(tuple(c for c in by_first if ch in sets[c]), set()).add(ch)
        branches = [(frozenset(cs), sorted(set().union(*(by_first[c] for c in signature))))
                    for signature, cs in by_signature.items()]
    alts = [_char_class(cs) + _radix_regex(tails) for cs, tails in sorted(branches, key=lambda b: sorted(b[0]))]
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return f"(?:{body})?" if ends else body


def _scrub_pattern(values: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of *values* (the hex letters of their %XX escapes in either case), at the leftmost
    place and there the longest: what ``"|".join`` of the values sorted longest first matches, but shaped as
    a radix tree of them, so that each place of the text costs one step per character matched, not one try per
    value (with a few hundred values, as a test process collected, 24 MB of output took a minute that way)."""
    values = list(values)
    try:
        return re.compile(_radix_regex(sorted({_encode(v) for v in values})))
    except RecursionError:
        # hundreds of values each the prefix of the next nest that many groups: the plain alternation then
        return _alternation_pattern(values)


def _alternation_pattern(values: Iterable[str]) -> re.Pattern[str]:
    """The same matches as one alternation of *values*, longest first: a try per value at each place of the text
    (the scrubber's regex before the radix tree; its fallback, and the baseline of tests and bench/scrub.py)."""
    return re.compile("|".join(_PCT_ESCAPE.sub(
        lambda m: "%" + "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in m.groups()), re.escape(v))
        for v in sorted(values, key=len, reverse=True)))


def _lower_pct(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _variants(value: str) -> set[str]:
    """The spellings under which a secret may show up in text we write."""
    out = {value}
    out.add(urllib.parse.quote(value, safe=""))
    out.add(urllib.parse.quote_plus(value))
    out.add(_lower_pct(urllib.parse.quote(value, safe="")))       # %2f: other encoders write lowercase hex
    out.add(_lower_pct(urllib.parse.quote_plus(value)))
    out.add(json.dumps(value)[1:-1])
    out.add(repr(value)[1:-1])
    out.add(value.replace("'", "''"))
    out.add(value.replace("\\", "\\\\").replace("'", "\\'"))
    out.add(html.escape(value))                                    # an HTML page: &amp; &lt; &quot; &#x27;
    out.add(html.escape(value, quote=False))
    out.add(html.escape(value, quote=False).replace("'", "&#39;").replace('"', "&#34;"))  # Jinja's escapes
    out.add(base64.b64encode(value.encode()).decode().rstrip("="))
    out |= _base64_cores(value.encode())
    return {v for v in out if len(v) >= MIN_SECRET_LENGTH}


class Scrubber:
    """Replaces every registered secret (and its common encodings) with a marker.

    The spellings are held in a few generations, each with its regex, merged as a log-structured store
    merges: a new secret compiles only its own spellings (most of a run's secrets arrive one at a time
    between scrubs: a certificate's key, a verifier, a probe's wrong password), and a generation is merged
    into the one before it once it is half that one's size, so there are at most about log2(n) of them and
    each spelling is compiled about log2(n) times in all.  A step that issued a dozen keys between probes
    recompiled every spelling after each one: 14.5 s of step 10's 36 s in the rehearsal.  :meth:`scrub`
    matches as one regex of every spelling would: the leftmost match of any generation, and there the
    longest (:func:`_sub_leftmost_longest`)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        #: the generations, oldest (largest) first: each a set of spellings and its regex
        self._gens: list[tuple[frozenset[str], re.Pattern[str]]] = []
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._file_state: tuple[str, float, int] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: str) -> None:
        if not value:
            return
        with self._lock:
            new = _variants(value) - self._values
            if new:
                self._values |= new
                self._pending |= new

    def add_many(self, values: Iterable[str]) -> None:
        for v in values:
            self.add(v)

    def reset(self, values: Iterable[str] = ()) -> None:
        """Hold exactly *values* (spellings, as :attr:`spellings` gives them) and forget the registry file read."""
        with self._lock:
            self._values, self._gens, self._pending = set(values), [], set(values)
            self._file_state = None

    @property
    def spellings(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._values)

    def load_file(self, path: str | os.PathLike[str]) -> None:
        """Register the values in a scrub registry file (one JSON string per line)."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            return
        key = (str(p), st.st_mtime, st.st_size)
        if self._file_state == key:
            return
        for line in p.read_text().splitlines():
            if line.strip():
                self.add(json.loads(line))
        self._file_state = key

    def _patterns(self) -> list[re.Pattern[str]]:
        """The generations' regexes, the pending spellings made a generation and merged (under the lock)."""
        if self._pending:
            gens = [*self._gens, (frozenset(self._pending), None)]
            self._pending = set()
            merged: list[tuple[frozenset[str], re.Pattern[str] | None]] = []
            for values, pattern in gens:
                while merged and 2 * len(values) >= len(merged[-1][0]):
                    values, pattern = merged.pop()[0] | values, None
                merged.append((values, pattern))
            self._gens = [(v, p if p is not None else _scrub_pattern(v)) for v, p in merged]
        return [p for _, p in self._gens]

    def scrub(self, text: str) -> str:
        if not text:
            return text
        with self._lock:
            if not self._values:
                return text
            patterns = self._patterns()
        return _sub_leftmost_longest(patterns, text)

    def scrub_obj(self, obj):  # noqa: ANN001 - JSON-like structures
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, list):
            return [self.scrub_obj(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self.scrub_obj(v) for k, v in obj.items()}
        return obj


def _sub_leftmost_longest(patterns: list[re.Pattern[str]], text: str) -> str:
    """*text* with each match replaced as one regex of all *patterns*' values would (each pattern matching the
    longest at the leftmost place): from left to right, the leftmost match of any, and of those starting
    there the longest; the scan goes on after it.  Each pattern's next match is kept until the scan passes
    its start: whatever was leftmost from an earlier place is leftmost from any place up to it."""
    if len(patterns) == 1:
        return patterns[0].sub(REDACTED, text)
    ahead: list[re.Match[str] | None] = [p.search(text) for p in patterns]
    out, pos = [], 0
    while True:
        best = None
        for i, m in enumerate(ahead):
            if m is not None and m.start() < pos:
                m = ahead[i] = patterns[i].search(text, pos)
            if m is not None and (best is None or m.start() < best.start()
                                  or (m.start() == best.start() and m.end() > best.end())):
                best = m
        if best is None or best.end() == best.start():  # no value is empty; a guard against looping
            break
        out += [text[pos:best.start()], REDACTED]
        pos = best.end()
    out.append(text[pos:])
    return "".join(out)


#: the scrubber of this process (kernel or runner)
SCRUBBER = Scrubber()


def register(value: str) -> str:
    """Register a secret value with this process's scrubber and the run's registry; returns it."""
    if not value:
        return value
    SCRUBBER.add(value)
    path = os.environ.get(SCRUB_FILE_ENV)
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(value) + "\n").encode())
        finally:
            os.close(fd)
    return value


def scrub(text: str) -> str:
    """Scrub *text* with this process's scrubber (and the run's registry, if any)."""
    path = os.environ.get(SCRUB_FILE_ENV)
    if path:
        SCRUBBER.load_file(path)
    return SCRUBBER.scrub(text)


def scrub_tail(text: str, n: int) -> str:
    """The last *n* characters of *text*, scrubbed first: a secret across the cut would keep its tail."""
    return scrub(text)[-n:]


# errors.RemoteCommandError cuts its output to a tail: it scrubs it first through this hook (errors
# imports nothing of ours, so it cannot import this module)
_errors.set_output_filter(scrub)


def _op(args: list[str], *, key: str, what: str) -> subprocess.CompletedProcess[str]:
    """Run the 1Password CLI with a deadline; never with a secret among *args*."""
    op = shutil.which("op")
    if op is None:
        raise SecretError(
            f"{key}: {what} needs the 1Password CLI, and `op` is not installed",
            hint="Install the 1Password CLI and sign in (eval $(op signin)), "
                 "or point the key at env:NAME or file:PATH.",
        )
    try:
        return subprocess.run([op, *args], capture_output=True, text=True, timeout=OP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SecretError(f"{key}: `op {args[0]} {args[1] if len(args) > 1 else ''}` did not answer within "
                          f"{OP_TIMEOUT_S:.0f}s ({what})",
                          hint="Is the 1Password app locked, or waiting for you to approve the CLI?") from None


def resolve(ref: str, *, key: str = "secret") -> str:
    """Resolve a secret reference to its value and register it for scrubbing.

    ``key`` is the params key the reference came from; it is named in every error.
    """
    if not isinstance(ref, str) or not is_secret_ref(ref):
        raise SecretError(
            f"{key}: {ref!r} is not a secret reference",
            hint="Write env:NAME, file:/path/to/file or op://vault/item/field.",
        )
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"{key}: environment variable {name} is not set (from {ref})",
                              hint=f"Export {name} in the shell that runs hcbpg.")
    elif ref.startswith("file:"):
        path = Path(os.path.expanduser(ref[5:]))
        try:
            value = path.read_text().rstrip("\r\n")
        except FileNotFoundError:
            raise SecretError(f"{key}: secret file {path} does not exist (from {ref})",
                              hint="Create it with mode 0600, or fix the reference.") from None
        except OSError as exc:
            raise SecretError(f"{key}: cannot read secret file {path}: {exc.strerror}") from None
    else:
        proc = _op(["read", "--no-newline", ref], key=key, what=ref)
        if proc.returncode != 0:
            raise SecretError(f"{key}: `op read` failed for {ref}: {scrub(proc.stderr.strip())[:300]}",
                              hint="Sign in with `eval $(op signin)` and check the vault, item and field.")
        value = proc.stdout
    if len(value) < MIN_SECRET_LENGTH:
        raise SecretError(
            f"{key}: the secret from {ref} is shorter than {MIN_SECRET_LENGTH} characters",
            hint="Use a longer secret; short values cannot be scrubbed from outputs safely.",
        )
    return register(value)


def generate_password(length: int = 32) -> str:
    """A new random password (URL-safe), registered for scrubbing before it is returned."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return register("".join(_stdlib_secrets.choice(alphabet) for _ in range(length)))


def write_private_file(path: "Path | str", data: str | bytes) -> Path:
    """Write *data* to *path* whole and atomically, readable and writable by this user alone: the one
    0600 writer (its directory is made 0700; a temporary file beside it, created 0600 and never through
    a symlink, is renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), stat.S_IRUSR | stat.S_IWUSR)  # whatever the umask or an older file
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def store_secret(ref: str, value: str, *, key: str = "secret") -> None:
    """Store a new secret value through its backend (``file:`` written 0600; ``op://`` via `op item edit`)."""
    register(value)
    if ref.startswith("file:"):
        write_private_file(os.path.expanduser(ref[5:]), value + "\n")
        return
    if ref.startswith("op://"):
        _store_in_1password(ref, value, key=key)
        return
    raise SecretError(
        f"{key}: {ref} cannot store a new value (environment variables are read-only)",
        hint="Point this key at file:PATH or op://vault/item/field to rotate it.",
    )


def render_item_template(item: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    """*item* (``op item get --format json``) with *field* (``[section/]label`` or id) set to *value*.

    A field that is not there yet is added as a concealed one."""
    section, _, label = field.rpartition("/")
    out = json.loads(json.dumps(item))
    fields = out.setdefault("fields", [])
    for f in fields:
        in_section = not section or (f.get("section") or {}).get("label") == section
        if in_section and (f.get("label") == label or f.get("id") == label):
            f["value"] = value
            return out
    fields.append({"id": label, "label": label, "type": "CONCEALED", "value": value})
    return out


def _store_in_1password(ref: str, value: str, *, key: str) -> None:
    """``op item edit --template``: the new value goes through a 0600 file that is removed after,
    never onto a command line (`ps` shows those to every user of the machine)."""
    vault, item, field = ref[5:].split("/", 2)
    got = _op(["item", "get", item, f"--vault={vault}", "--format=json"], key=key, what=f"reading item {item}")
    if got.returncode != 0:
        raise SecretError(f"{key}: `op item get` failed for {item}: {scrub(got.stderr.strip())[:300]}",
                          hint="Sign in with `eval $(op signin)` and check the vault and item.")
    template = render_item_template(json.loads(got.stdout), field, value)
    d = tempfile.mkdtemp(prefix="hcbpg-op-")  # 0700, ours alone
    path = Path(d) / "item.json"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(template).encode())
        finally:
            os.close(fd)
        proc = _op(["item", "edit", item, f"--vault={vault}", f"--template={path}"], key=key,
                   what=f"storing the new value of {field} in {item}")
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(d)
    if proc.returncode != 0:
        raise SecretError(f"{key}: `op item edit` failed: {scrub(proc.stderr.strip())[:300]}")

