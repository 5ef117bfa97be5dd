"""``kill -9`` at every step of the receive path (issue 13, HARDENING F10, F12).

Since issue 13 an instance is written in place into a slot file of
``instances/`` and the journal, not the file's name, records custody. These
tests stop the real gateway (``SIGSTOP``, from an ``LD_PRELOAD`` shim:
:mod:`tests.support.faultshim`) at one exact point of one C-STORE, kill it
with ``SIGKILL`` there, restart it on the same spool, and check what the
custody promise says for that point:

=============================================  ===============================================
killed                                         after the restart
=============================================  ===============================================
before the first write of the instance's file  no success was sent; no file, no journal row
before its fdatasync                           same
after its fdatasync, before the journal's sync same (the file is removed: no journal row)
after the WAL write, before the WAL's sync     no success was sent; the frame is in the page
                                               cache, which kill -9 keeps, so SQLite finds the
                                               transaction committed: journaled and delivered
                                               (a power cut here would lose it: the strace
                                               order test covers that the sync comes first)
after the WAL's sync, before the C-STORE-RSP   no success was sent, but the instance is in
                                               custody: journaled and delivered (at least once)
=============================================  ===============================================

and in every case the modality's re-send is acknowledged and delivered, no
partial or unjournaled file is left in the spool, and the journal passes
``PRAGMA integrity_check``.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.interop.test_forward_durability import integrity
from tests.interop.test_storage_faults import ShimGateway
from tests.support import dcmtk
from tests.support.gateway_process import folder_destination
from tests.support.interop import ForwardTestMixin, make_series, sop_instance_uid


def stopped(pid: int) -> bool:
    """Whether a process is stopped (state ``T`` in ``/proc/PID/stat``).

    :param pid: the process.
    :returns: ``True`` when stopped.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def delivered_uids(archive: Path) -> list[str]:
    """The SOP Instance UIDs of the files a folder destination holds.

    :param archive: the destination's folder.
    :returns: one UID per file (a UID twice: delivered twice).
    """
    return [sop_instance_uid(path) for path in archive.rglob("*.dcm")] if archive.is_dir() else []


class KillAtEveryStepTests(ForwardTestMixin, TestCase):
    """One C-STORE, the gateway killed at one point of its custody path, then restarted."""

    timeout = 240

    def kill_at(self, point: str, substring: str, *, journaled: bool) -> None:
        """Stop the gateway at ``point`` of a call on a file matching ``substring``, kill it, restart, check.

        :param point: the shim's stop point (``write``, ``sync``, ``synced``).
        :param substring: part of the path of the file the call is on.
        :param journaled: whether the instance is in custody at that point
            (its journal transaction has committed).
        """
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        archive = tmp / "archive"
        gateway = ShimGateway(
            tmp / "gw",
            destinations={"archive": folder_destination(archive)},
            routes=[{"name": "all", "forward": ["archive"]}],
        )
        self.addCleanup(gateway.stop)
        gateway.start()
        source = tmp / "source"
        make_series(source, 1, 256 * 1024)
        (path,) = source.iterdir()
        uid = sop_instance_uid(path)
        gateway.shim.stop_at(point, substring)
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(dcmtk.storescu, gateway.port, [source], extra=["+sd", "-v"], timeout=120)
            for _ in range(50):
                self.wait_for(gateway, lambda: gateway.shim.hits("stop") and stopped(gateway.pid), 60,
                              f"the gateway stopped at {point} {substring}")
                (where,) = set(gateway.shim.hits("stop"))
                self.assertIn(substring, where)
                if not substring.endswith("-wal") or uid.encode() in Path(where).read_bytes():
                    break
                # Another transaction's sync (the workers' bookkeeping): let it go on, stop at the next.
                gateway.shim.log.unlink()
                os.kill(gateway.pid, signal.SIGCONT)
            else:
                self.fail("the gateway never stopped at the instance's own transaction")
            gateway.kill()
            result = sending.result(timeout=120)
        self.assertNotIn("Received Store Response (Success)", result.output,
                         "the modality was told success before the gateway died")
        gateway.shim.disarm()
        gateway.start()
        if journaled:
            self.wait_for(gateway, lambda: uid in delivered_uids(archive), 60, "the journaled instance delivered")
            self.assertEqual(len(gateway.journaled_ids()), 1)
        else:
            self.wait_for(gateway, lambda: self.idle(gateway), 30, "an idle queue")
            self.assertEqual(gateway.journaled_ids(), set(), "an instance never acknowledged was journaled")
            self.assertEqual(delivered_uids(archive), [])
        self.assertEqual(gateway.incoming(), [], "a partial or unjournaled file is left in the spool")
        # The modality sends again: acknowledged and delivered.
        again = dcmtk.storescu(gateway.port, [source], extra=["+sd", "-v"])
        self.assertEqual(again.returncode, 0, again.describe())
        self.assertIn("Received Store Response (Success)", again.output)
        self.wait_for(gateway, lambda: uid in delivered_uids(archive) and self.idle(gateway), 60,
                      "the re-sent instance delivered")
        gateway.stop()
        self.assertEqual(integrity(gateway.spool / "queue.sqlite"), "ok")

    def test_killed_before_the_first_write_of_the_instance_file(self) -> None:
        """Killed as the instance's bytes start landing in its slot: no success, nothing kept, the re-send is delivered."""
        self.kill_at("write", "/instances/", journaled=False)

    def test_killed_before_the_instance_file_fdatasync(self) -> None:
        """Killed with every byte written but not flushed: no success, the file is removed at restart."""
        self.kill_at("sync", "/instances/", journaled=False)

    def test_killed_after_the_fdatasync_before_the_journal(self) -> None:
        """Killed with the file durable but no journal row: never acknowledged, so the file is removed at restart."""
        self.kill_at("synced", "/instances/", journaled=False)

    def test_killed_after_the_wal_write_before_its_sync(self) -> None:
        """Killed with the instance's frame written to the WAL but not synced: no success sent; kill -9 keeps the page cache, so the commit survives and the instance is delivered."""
        self.kill_at("sync", "queue.sqlite-wal", journaled=True)

    def test_killed_after_the_journal_commit_before_the_response(self) -> None:
        """Killed after the journal's sync, before the C-STORE-RSP: no success sent, yet the instance is in custody and delivered."""
        self.kill_at("synced", "queue.sqlite-wal", journaled=True)
