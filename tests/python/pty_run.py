"""Runs a command on a pseudo-terminal of 120 x 40, as a person's shell would, and prints
everything it wrote there (stdout and stderr together, escape codes included), then exits with
its exit code. For the CLI tests of what people see on a terminal (tests/terminal.rs).

Usage: pty_run.py COMMAND [ARGS...]   (the environment is passed through)
"""

import errno
import fcntl
import os
import struct
import subprocess
import sys
import termios


def main():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as e:
            if e.errno == errno.EIO:  # the child closed its side
                break
            raise
        if not data:
            break
        out.extend(data)
    code = child.wait()
    sys.stdout.buffer.write(bytes(out))
    sys.exit(code)


if __name__ == "__main__":
    main()
