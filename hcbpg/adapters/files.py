"""The shell behind root's file and directory writes on a server, made so that no other user can redirect them.

A write by root into a directory another user can change (``/etc/postgresql/15/main`` and its
``tls``, PGDATA, ``/var/lib/postgresql``, Bucardo's home: all the postgres user's) is a way in:
that user swaps root's temporary file, or the directory about to be created, for a symlink, and
root writes, ``chown``\\s or ``chmod``\\s the file it points at.  So each script first judges the
target's directory, both as resolved (symlinks followed once, now) and as written (a symlink on the
way, planted by the owner of the directory holding it, could point into root's own):

* **root's alone**: it and every directory above it belong to root and no one else may write
  there (or only under the sticky bit, where no one else may rename root's entries).  Nothing
  can change under root's feet: root writes a temporary file there, ``chmod``, ``chown -h`` (last:
  in a sticky directory the new owner may rename its file, so nothing after it may follow a
  name) and renames it into place.
* **another user's**: the whole write runs as the file's owner (``runuser -u``), so a symlink
  planted there reaches only what that user could write anyway.  A root-owned file is refused
  in such a directory (exit :data:`REFUSED_EXIT`, a message on stderr naming the directory).
  A directory the owner may not create (in Ubuntu's ``/var/log``, root's but writable by the
  syslog group) is made by root with ``mkdir -m`` and ``chown -h`` (neither follows a symlink)
  when the way to its parent is root's alone.

The content always travels on stdin, never on a command line.  The ``*_script`` functions only build
the scripts, this adapter's internals (:meth:`~hcbpg.adapters.host.Host.put_text` runs what
:func:`put_file_script` builds; :func:`ensure_dir` runs :func:`ensure_dir_script` on a host).
"""

from __future__ import annotations

import shlex

from hcbpg.adapters.base import HostLike

__all__ = ["REFUSED_EXIT", "WRITE_HINT", "ensure_dir", "ensure_dir_script", "put_file_script"]

#: the exit status of a write refused because another user could redirect it
REFUSED_EXIT = 77
#: what to do when a write is refused
WRITE_HINT = ("hcbpg writes a root-owned file only where no other user can change the directory, and a "
              "directory only where no symlink stands in its place: look at the path the message names "
              "(who owns it, whether something was planted there) before running the step again.")

#: ``judge PATH``: sets ``safe=no`` and ``p`` to the first directory that is not root's alone among PATH
#: and the directories above it (each followed if a symlink): owned by another user, or writable by
#: one (unless sticky: others cannot rename root's entries there).  %a is octal without its 0.
_JUDGE = (
    'judge() {\n'
    '  p=$1\n'
    '  while :; do\n'
    '    s=$(stat -L -c "%u %a" -- "$p") || exit 2\n'
    '    case $s in\n'
    '      "0 "*) a=${s#0 }\n'
    '             if [ $((0$a & 022)) != 0 ] && [ $((0$a & 01000)) = 0 ]; then safe=no; return; fi ;;\n'
    '      *) safe=no; return ;;\n'
    '    esac\n'
    '    [ "$p" = / ] && return\n'
    '    p=${p%/*}; p=${p:-/}\n'
    '  done\n'
    '}\n'
)


def _judge(resolved: str, literal: str) -> str:
    """Shell: ``safe=yes`` only when both the resolved directory and the path as written (whose
    symlinks another user could have planted, pointing into root's directories) are root's alone."""
    return _JUDGE + f'safe=yes; judge {resolved}; [ "$safe" = no ] || judge {literal}\n'


def _fail(*parts: str) -> str:
    """Shell that prints one line on stderr and exits :data:`REFUSED_EXIT`: *parts* are literal text,
    except ``$name`` (a shell variable, expanded)."""
    words = ['"' + p + '"' if p.startswith("$") else shlex.quote(p) for p in parts]
    return f"{{ printf '%s\\n' {''.join(words)} >&2; exit {REFUSED_EXIT}; }}"


def _refuse(what: str) -> str:
    return _fail(f"hcbpg: refusing to {what}: ", "$p", " can be changed by a user other than root, "
                 "so that user could redirect the write") + "\n"


def _split(path: str) -> tuple[str, str]:
    if not path.startswith("/") or path.endswith("/") or "\0" in path:
        raise ValueError(f"not an absolute file path: {path!r}")
    parent, name = path.rsplit("/", 1)
    if any(part in (".", "..") for part in path.split("/")) or "//" in path:
        raise ValueError(f"not a plain absolute file path: {path!r}")
    return parent or "/", name


#: the write itself, as root in a directory of root's alone or as the file's owner in their own:
#: $1 directory, $2 name, $3 mode, $4 owner:group for chown -h (":group" as the owner)
_WRITE = ('cd / && umask 077 && tmp=$(mktemp -- "$1/.hcbpg.XXXXXX") || exit\n'
          '{ cat > "$tmp" && chmod -- "$3" "$tmp" && chown -h -- "$4" "$tmp" && mv -fT -- "$tmp" "$1/$2"; } '
          '|| { rc=$?; rm -f -- "$tmp"; exit $rc; }\n')


def put_file_script(path: str, *, mode: int, owner: str, group: str) -> str:
    """A shell script (run as root) that writes stdin to *path* whole and atomically, with *owner*,
    *group* and *mode*, through no symlink another user could plant."""
    parent, name = _split(path)
    q = shlex.quote
    return (
        "set -u\n"
        f"d=$(realpath -e -- {q(parent)}) || exit 2\n"
        f'[ -d "$d" ] || ' + _fail(f"hcbpg: {parent} is not a directory") + "\n"
        + _judge('"$d"', q(parent)) +
        f"w={q(_WRITE)}\n"
        'if [ "$safe" = yes ]; then\n'
        f'  sh -c "$w" sh "$d" {q(name)} {mode:04o} {q(f"{owner}:{group}")}\n'
        "else\n  "
        + (_refuse(f"write root's file {path}") if owner == "root" else
           f'runuser -u {q(owner)} -- sh -c "$w" sh "$d" {q(name)} {mode:04o} {q(":" + group)}\n')
        + "fi\n")


def ensure_dir_script(path: str, *, mode: int, owner: str, group: str) -> str:
    """A shell script (run as root): *path* is a directory with *owner*, *group* and *mode* (made with
    its parents when missing).  A symlink in its place is refused, so is a directory that belongs to
    someone other than root or *owner*; in a directory another user can change it runs as *owner*."""
    parent, name = _split(path)
    q = shlex.quote
    return (
        "set -u\n"
        # the nearest existing ancestor, resolved; what does not exist yet is appended as it is
        f"e={q(parent)}; rest=\n"
        'while [ ! -e "$e" ] && [ ! -L "$e" ]; do rest=/${e##*/}$rest; e=${e%/*}; e=${e:-/}; done\n'
        'd=$(realpath -e -- "$e") || exit 2\n'
        + _judge('"$d"', '"$e"') +
        'd=${d%/}$rest; d=${d:-/}; t=${d%/}/' + q(name) + "\n"
        '[ -L "$t" ] && ' + _fail(f"hcbpg: refusing to use {path}: it is a symbolic link") + "\n"
        'if [ "$safe" = yes ]; then\n'
        '  umask 022; mkdir -p -- "$d" || exit\n'
        '  if (umask 077 && mkdir -m 0700 -- "$t") 2>/dev/null; then u=root\n'
        '  elif [ -d "$t" ] && [ ! -L "$t" ]; then u=$(stat -c %U -- "$t") || exit 2\n'
        '  else ' + _fail(f"hcbpg: {path} exists and is not a directory") + "; fi\n"
        # root's own entry in root's directory: no one else can swap it
        '  if [ "$u" = root ]; then\n'
        f"    chmod -- {mode:04o} \"$t\" && chown -h -- {q(f'{owner}:{group}')} \"$t\"; exit\n"
        f"  elif [ \"$u\" != {q(owner)} ]; then\n"
        '    ' + _fail(f"hcbpg: refusing to take over {path}: it belongs to ", "$u") + "\n"
        "  fi\n"
        "fi\n"
        # the owner's directory, or one another user can change: as the owner
        + (_refuse(f"make root's directory {path}") if owner == "root" else
           f"err=$(runuser -u {q(owner)} -- sh -c "
           + q('cd / && install -d -m "$2" -- "$1" && chown -h -- ":$3" "$1"')
           + f' sh "$t" {mode:04o} {q(group)} 2>&1) && exit\n'
           # the owner may not write there (/var/log: root's, writable by the syslog group): root makes
           # it, with no step that follows a symlink, when the directory is root's and the way to it
           # root's alone
           + '{ [ -z "$rest" ] && [ ! -e "$t" ] && [ ! -L "$t" ]; } || { printf \'%s\\n\' "$err" >&2; exit 1; }\n'
           + '[ "$(stat -c %u -- "$d")" = 0 ] || ' + _refuse(f"make {path}").rstrip("\n") + "\n"
           + 'safe=yes; g=${d%/*}; judge "${g:-/}"; l=${e%/*}; [ "$safe" = no ] || judge "${l:-/}"\n'
           + '[ "$safe" = yes ] || ' + _refuse(f"make {path}").rstrip("\n") + "\n"
           + f"umask 0; mkdir -m {mode:04o} -- \"$t\" && chown -h -- {q(f'{owner}:{group}')} \"$t\"\n"))


def ensure_dir(host: HostLike, path: str, *, mode: int, owner: str = "root", group: str | None = None) -> None:
    """*path* is a directory with *owner*, *group* and *mode* on *host* (:func:`ensure_dir_script`);
    raises RemoteCommandError when it cannot be made so safely."""
    grp = group or owner
    host.run(ensure_dir_script(path, mode=mode, owner=owner, group=grp), quiet=True, hint=WRITE_HINT,
             display=f"directory {path} (mode {mode:04o}, owner {owner}:{grp})")
