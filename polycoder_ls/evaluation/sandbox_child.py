"""The child side of the sandbox: run with `python -I -S` on a program read from stdin.

It limits itself (memory, CPU time, file size, no core dumps), leaves the network (a new,
empty network namespace where the kernel allows one), installs an audit hook that refuses
sockets, new processes, signals to other processes, native calls, and writes or deletions
outside its working directory, and only then executes the program. A hook cannot be removed,
so the program runs under it. Stdin: a line with a token, then the program. The token is
written to stdout only when the program ran to its end (an `exit(0)` or `os._exit(0)` in it is
not a pass); the program's own output goes nowhere. Not imported by polycoder_ls: it runs
alone, with the standard library only.
"""

import os
import resource
import sys
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
FILE_SIZE_LIMIT = 1024 * 1024
REFUSED_PREFIXES = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.",
    "ctypes.",
    "_posixsubprocess.",
    "webbrowser.",
    "urllib.",
    "http.",
    "ftplib.",
    "smtplib.",
)
WRITE_EVENTS = (
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
    "os.chflags",
)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Refused(PermissionError):
    pass


def limit_resources(seconds: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def leave_network() -> None:
    """A new network namespace has only a loopback that is down; not allowed: the hook alone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
    except (OSError, AttributeError):
        pass


def inside(path: object, root: str) -> bool:
    if isinstance(path, int):
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def refuse_outside(root: str) -> Callable[[str, tuple[object, ...]], None]:
    def hook(event: str, args: tuple[object, ...]) -> None:
        if event.startswith(REFUSED_PREFIXES):
            raise Refused(f"not allowed in the sandbox: {event}")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            if isinstance(mode, str):
                writes = any(letter in mode for letter in "wax+")
            else:
                writes = isinstance(flags, int) and bool(flags & WRITE_FLAGS)
            if writes and not inside(path, root):
                raise Refused(f"not allowed in the sandbox: writing {path}")
        elif (
            event in WRITE_EVENTS
            and args
            and not all(inside(arg, root) for arg in args[:2] if isinstance(arg, (str, bytes)))
        ):
            raise Refused(f"not allowed in the sandbox: {event} {args[0]}")

    return hook


def main() -> int:
    seconds, memory_bytes = int(sys.argv[1]), int(sys.argv[2])
    token = sys.stdin.readline().strip()
    source = sys.stdin.read()
    report = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    root = os.path.realpath(os.getcwd())
    limit_resources(seconds, memory_bytes)
    leave_network()
    sys.addaudithook(refuse_outside(root))
    code = compile(source, "<program>", "exec")
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exit:
        print(f"SystemExit: the program exited ({exit.code!r})", file=sys.stderr)
        return 1
    os.write(report, token.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
