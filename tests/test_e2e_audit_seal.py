"""Sealing on a real agent: `audit seal-init`, a log written over several one-second
epochs through real mTLS requests, rotated and compressed on the way, and the tamper
suite run against copies of it with `host-agent audit verify --seal-key`; and agents
killed with SIGKILL mid-epoch and at rotation, whose logs still verify."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_agent.audit import canonical, record_hash
from host_agent.audit.chain import stamp
from host_agent.audit.seal import Epochs, SealKey, VerificationKey
from host_agent.cli import main
from host_agent.config import load_config
from tests.support import (
    Pki,
    client,
    client_context,
    config_text,
    listening_port,
    running_agent,
    serve_process,
    write_config,
)

EPOCH_SECONDS = 1
VERIFIER = r"\S+\+[0-9a-f]{8}\+\S+"  # a checkpoint verifier key, as printed
REFUSED = {"kind": "zfs", "resource": "tank/data", "args": ["snapshot", "x"]}


@dataclass(frozen=True)
class SealedLog:
    files: list[Path]  # oldest first: a gzipped rotated file, then the live one
    key: str  # the verification key seal-init printed
    key_file: Path
    notes: Path  # the checkpoints, as a witness kept them
    verifier: str  # the checkpoint verifier key checkpoint-init printed


def sealed_config(pki: Pki, directory: Path) -> Path:
    """Sealed, one-second epochs; and a checkpoint a second (no witness: the tests
    take the notes from the untouched log, as a witness would have them)."""
    path = directory / "agent.toml"
    write_config(
        path,
        config_text(
            pki,
            directory,
            audit=f"""seal_key_file = "{directory / "seal.key"}"
seal_epoch_seconds = {EPOCH_SECONDS}
[audit.checkpoints]
key_file = "{directory / "checkpoint.key"}"
every_seconds = 1
""",
        ),
    )
    return path


def seal_init(config: Path) -> str:
    """Run `audit seal-init`; the verification key it printed."""
    return init_and_print(config, "seal-init", r"[0-9a-f-]{71}/[0-9a-f]+-[0-9a-f]+")


def init_and_print(config: Path, command: str, key: str) -> str:
    """Run `audit COMMAND`; the key it printed, on a line of its own."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["audit", command, "--config", str(config)]) == 0
    [found] = re.findall(f"^    ({key})$", printed.getvalue(), re.M)
    return str(found)


def verify(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main(["audit", "verify", *map(str, argv)])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def sealed_log(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> SealedLog:
    """About four epochs of refused requests from a real agent, its log rotated (and
    the old file gzipped, as logrotate does) half-way."""
    directory = tmp_path_factory.mktemp("sealed")
    config = sealed_config(pki, directory)
    key = seal_init(config)
    verifier = init_and_print(config, "checkpoint-init", VERIFIER)
    log = directory / "audit.jsonl"
    with running_agent(load_config(config)) as agent, client(agent, pki, "reader-1") as http:
        for n in range(16):
            assert http.post("/host/op", json=REFUSED).status_code == 403
            if n == 8:
                log.rename(directory / "audit.jsonl.1")  # the agent follows on its next write
            time.sleep(0.25)
        # The last request opens an epoch and the agent stops inside it, so the log
        # ends with records after its last seal that the shutdown checkpoint covers
        # (stopping just after a boundary would end it with a seal: nothing to cut).
        sleep_into_a_fresh_epoch(VerificationKey.parse(key).epochs)
        assert http.post("/host/op", json=REFUSED).status_code == 403
    rotated = directory / "audit.jsonl.1"
    compressed = rotated.with_name(rotated.name + ".gz")
    with rotated.open("rb") as source, gzip.open(compressed, "wb") as sink:
        shutil.copyfileobj(source, sink)
    rotated.unlink()
    notes = directory / "witnessed.notes"
    files = [compressed, log]
    notes.write_text("".join(r["note"] for path in files for r in records(path) if "note" in r))
    return SealedLog(files, key, directory / "seal.key", notes, verifier)


def sleep_into_a_fresh_epoch(epochs: Epochs) -> None:
    now = time.time()
    time.sleep(epochs.end(epochs.at(now)) - now + 0.05)


def records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    text = "".join(canonical(record) + "\n" for record in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def rechain(lines: list[dict[str, Any]], start: int, prev: str) -> None:
    """Renumber and rehash from `start` on, as an attacker without the seal keys would."""
    for index in range(start, len(lines)):
        record = lines[index]
        record["prev"] = lines[index - 1]["hash"] if index else prev
        record["seq"] = lines[index - 1]["seq"] + 1 if index else record["seq"]
        record["hash"] = record_hash(record)


def seal_indices(lines: list[dict[str, Any]]) -> list[int]:
    return [i for i, record in enumerate(lines) if record["event"] == "audit_seal"]


def test_a_real_agent_seals_every_epoch_and_its_log_verifies(
    sealed_log: SealedLog, capsys: pytest.CaptureFixture[str]
) -> None:
    everything = [record for path in sealed_log.files for record in records(path)]
    epochs = [r["epoch"] for r in everything if r["event"] == "audit_seal"]
    assert len(epochs) >= 2 and epochs == list(range(epochs[0], epochs[0] + len(epochs)))
    assert records(sealed_log.files[1])[0]["event"] == "audit_file"
    code, out = verify(capsys, "--seal-key", sealed_log.key, *sealed_log.files)
    assert code == 0, out
    assert f"sealed through epoch {epochs[-1]}" in out
    # Without the key: the chain alone, as before.
    code, out = verify(capsys, *sealed_log.files)
    assert code == 0 and out.startswith(f"OK: {len(everything)} records")


# Each tamper changes copies of the two files (rotated first) and names what verify
# must then say. `rewrite` recomputes every hash after the change, which fools the
# chain alone, so only the seals can catch it.
Tamper = Callable[[list[list[dict[str, Any]]], SealedLog], None]


def edit_a_field(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    files[0][2]["cn"] = "admin-1"


def delete_a_record(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    del files[0][3]


def reorder(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    files[0][2], files[0][3] = files[0][3], files[0][2]


def cut_the_head(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    del files[0][:2]


def swap_the_files(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    files.reverse()


def rewrite_from_a_point(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    files[0][2]["cn"] = "admin-1"
    rechain(files[0], 2, files[0][1]["hash"])
    rechain(files[1], 0, files[0][-1]["hash"])


def cut_the_tail_and_append(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    """Back to just after the live file's first seal, then new records, written (and
    dated) a little later, as the agent or an attacker with the current key would
    write them: neither can seal the epochs cut out."""
    live = files[1]
    keep = seal_indices(live)[0] + 1
    later = stamp(time.time() + 2 * EPOCH_SECONDS)
    appended = [{**record, "ts": later} for record in live if record["event"] == "decision"]
    del live[keep:]
    live.extend(appended[-3:])
    rechain(live, keep, live[keep - 1]["hash"])


def reseal_with_a_later_key(files: list[list[dict[str, Any]]], log: SealedLog) -> None:
    """The attacker reads the key file (the epoch of the moment) and seals an edited
    earlier epoch with it."""
    stolen = SealKey.load(log.key_file)
    first = files[0]
    seal = seal_indices(first)[0]
    first[1]["cn"] = "admin-1"
    rechain(first[: seal + 1], 1, first[0]["prev"])
    first[seal]["mac"] = stolen.mac(first[seal])
    first[seal]["hash"] = record_hash(first[seal])
    rechain(first, seal + 1, first[seal]["hash"])
    rechain(files[1], 0, first[-1]["hash"])


@pytest.mark.parametrize(
    ("tamper", "said"),
    [
        pytest.param(edit_a_field, "hash does not match", id="edit-a-field"),
        pytest.param(delete_a_record, "prev does not match", id="delete-a-record"),
        pytest.param(reorder, "prev does not match", id="reorder"),
        pytest.param(cut_the_head, "without its audit_file record", id="cut-the-head"),
        pytest.param(swap_the_files, "prev does not match", id="swap-a-rotated-file"),
        pytest.param(rewrite_from_a_point, "MAC does not match", id="rewrite-and-rehash"),
        pytest.param(cut_the_tail_and_append, "are missing", id="cut-tail-and-append"),
        pytest.param(reseal_with_a_later_key, "MAC does not match", id="reseal-later-key"),
    ],
)
def test_each_tamper_is_caught_by_its_check(
    sealed_log: SealedLog,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Tamper,
    said: str,
) -> None:
    copies = [tmp_path / path.name for path in sealed_log.files]
    contents = [records(path) for path in sealed_log.files]
    tamper(contents, sealed_log)
    for copy, lines in zip(copies, contents, strict=True):
        write(copy, lines)
    code, out = verify(capsys, "--seal-key", sealed_log.key, *copies)
    assert code == 1, out
    assert out.startswith("BROKEN") and said in out, out


def test_a_tail_cut_and_left_is_caught_by_the_witness_not_the_seals(
    sealed_log: SealedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cut back to the last seal and left that way: locally that is an agent that
    stopped, and the seals pass; the checkpoints a witness took say otherwise."""
    copies = [tmp_path / path.name for path in sealed_log.files]
    contents = [records(path) for path in sealed_log.files]
    live = contents[1]
    cut = live[seal_indices(live)[-1] + 1 :]
    assert any(r["event"] == "decision" for r in cut), "the fixture ends after a seal"
    del live[seal_indices(live)[-1] + 1 :]
    for copy, lines in zip(copies, contents, strict=True):
        write(copy, lines)
    code, out = verify(capsys, "--seal-key", sealed_log.key, *copies)
    assert code == 0, out
    witnessed = ("--checkpoints", sealed_log.notes, "--checkpoint-key", sealed_log.verifier)
    code, out = verify(capsys, "--seal-key", sealed_log.key, *witnessed, *copies)
    assert code == 1 and "records were cut from the end" in out, out
    code, out = verify(capsys, *witnessed, *sealed_log.files)
    assert code == 0, out


def test_an_agent_killed_mid_epoch_and_at_rotation_leaves_a_log_that_verifies(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = sealed_config(pki, tmp_path)
    key = seal_init(config)
    init_and_print(config, "checkpoint-init", VERIFIER)
    log = tmp_path / "audit.jsonl"
    cert, client_key = pki.client("reader-1")
    context = client_context(pki.ca, cert, client_key)

    def run_until_killed(requests: int, rotate: bool) -> None:
        process = serve_process(config)
        try:
            port = listening_port(process)
            with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http:
                for _ in range(requests):
                    assert http.post("/host/op", json=REFUSED).status_code == 403
                    time.sleep(0.3)
            if rotate:
                log.rename(tmp_path / "audit.jsonl.1")  # as logrotate does, no signal yet
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=10)

    run_until_killed(5, rotate=False)  # mid-epoch, most likely mid-write of nothing
    time.sleep(2.5)  # a whole epoch passes while it is down
    run_until_killed(5, rotate=True)  # killed just after logrotate moved its file
    run_until_killed(5, rotate=False)
    files = [tmp_path / "audit.jsonl.1", log]
    code, out = verify(capsys, "--seal-key", key, *files)
    assert code == 0, out
    seals = [r for path in files for r in records(path) if r["event"] == "audit_seal"]
    # The epoch it was down for is declared empty by the seal written on its return.
    assert any(seal["through"] > seal["epoch"] for seal in seals), [
        (seal["epoch"], seal["through"], seal["ts"]) for seal in seals
    ]
    assert VerificationKey.parse(key).epochs.interval == EPOCH_SECONDS
