"""One channel of the Linux kernel PWM driver, through sysfs (``/sys/class/pwm``).

The Raspberry Pi's PWM block is hardware-timed; gpiozero cannot drive it (none of its pin
factories is), so the control pilot uses it through the kernel: ``dtoverlay=pwm,pin=18,func=2``
in ``config.txt`` gives ``pwmchip0``, channel 0, on GPIO18 (Pi 0-4). On a Pi 5 with kernel 6.12
and later, GPIO18/19 are channels 2/3 of ``pwmchip0``.

The sysfs interface, in nanoseconds::

    <root>/pwmchipN/export             write M to create pwmM/ (EBUSY if it already exists)
    <root>/pwmchipN/pwmM/period        the period, ns
    <root>/pwmchipN/pwmM/duty_cycle    the active (high, with normal polarity) time, ns; <= period
    <root>/pwmchipN/pwmM/polarity      "normal" or "inversed"; only while disabled
    <root>/pwmchipN/pwmM/enable        1 or 0

Each attribute is written in one ``write()`` on a freshly opened file: the kernel applies a
value per write, and a fake tree of regular files in tests is truncated the same way.

No gpiozero here, no module-level state.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

#: The usual place of the PWM class in sysfs.
DEFAULT_SYSFS_PWM_ROOT = "/sys/class/pwm"

_POLL_S = 0.01


class SysfsPwmChannel:
    """One exported PWM channel: ``<root>/pwmchip<chip>/pwm<channel>``.

    The constructor exports the channel if needed (a channel already exported, by a previous
    run or by someone else, is taken over as it is) and waits up to ``export_timeout_s`` for
    its attribute files to be writable: after an export, udev creates the directory and
    changes the files' group a few milliseconds later, so an unprivileged daemon in the
    ``gpio`` group must wait for it.
    """

    def __init__(
        self,
        chip: int,
        channel: int,
        *,
        root: str | os.PathLike[str] = DEFAULT_SYSFS_PWM_ROOT,
        export_timeout_s: float = 2.0,
    ) -> None:
        self.chip_dir = Path(root) / f"pwmchip{chip}"
        self.dir = self.chip_dir / f"pwm{channel}"
        if not self.chip_dir.is_dir():
            raise FileNotFoundError(
                f"{self.chip_dir} does not exist: is the PWM overlay loaded "
                "(dtoverlay=pwm,pin=18,func=2 in config.txt)?"
            )
        if not self.dir.is_dir():
            try:
                _write(self.chip_dir / "export", str(channel))
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # EBUSY: exported meanwhile; take it over
                    raise
        self._wait_writable(export_timeout_s)

    def _wait_writable(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        names = ("period", "duty_cycle", "enable")
        while True:
            if all(os.access(self.dir / name, os.W_OK) for name in names):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.dir}: attributes not writable {timeout_s} s after export "
                    "(is the daemon's user in the gpio group?)"
                )
            time.sleep(_POLL_S)

    def configure(self, period_ns: int, duty_ns: int) -> None:
        """Set the period, the duty and normal polarity, and enable the output.

        The kernel wants ``duty_cycle <= period`` after every write, so a growing period is
        written before the duty and a shrinking one after it: no intermediate duty ever
        reaches the pin (on the pilot, a stray 0 % or 100 % is a stray state F or x1).
        Polarity can only change while disabled: a channel left "inversed" by someone else
        is disabled first.
        """
        if not 0 <= duty_ns <= period_ns:
            raise ValueError(f"duty {duty_ns} ns outside the period {period_ns} ns")
        polarity = self.dir / "polarity"
        if polarity.exists() and polarity.read_text(encoding="ascii").strip() != "normal":
            self._write("enable", "0")
            self._write("polarity", "normal")
        try:
            current_period = int((self.dir / "period").read_text(encoding="ascii"))
        except ValueError:
            current_period = 0
        if period_ns >= current_period:
            self._write("period", str(period_ns))
            self.set_duty_ns(duty_ns)
        else:
            self.set_duty_ns(duty_ns)
            self._write("period", str(period_ns))
        self._write("enable", "1")

    def set_duty_ns(self, duty_ns: int) -> None:
        """The active time per period, in nanoseconds."""
        self._write("duty_cycle", str(duty_ns))

    def _write(self, name: str, value: str) -> None:
        _write(self.dir / name, value)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)
