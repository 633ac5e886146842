"""`host-agent audit verify`: check the log's chain (and its seals, and what its
witnesses saw); `audit seal-init` and `audit checkpoint-init`: start sealing it and
signing checkpoints of it."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from host_agent.audit import verify
from host_agent.audit.chain import stamp
from host_agent.audit.checkpoint import CheckpointError, SigningKey, Verifier
from host_agent.audit.checkpoint_check import load_checkpoints
from host_agent.audit.seal import Epochs, SealError, SealKey, VerificationKey, new_seed
from host_agent.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Commands
from host_agent.config import load_config
from host_agent.errors import ConfigError

# `audit verify --processes`: more than a host's CPUs only slows it down.
MAX_PROCESSES = 64


def register(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(required=True, metavar="ACTION")
    check = audit_commands.add_parser(
        "verify",
        help="check the hash chain through FILEs, oldest first (and with --seal-key, the seals)",
    )
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument(
        "--seal-key",
        type=_verification_key,
        help="the verification key seal-init printed: check the seals too",
    )
    check.add_argument(
        "--unmarked-head",
        action="store_true",
        help="accept files that do not begin with their audit_file record "
        "(rotated by a host-agent that did not write one)",
    )
    check.add_argument(
        "--checkpoints",
        metavar="SOURCE",
        help="a witness's checkpoints: a file of notes, or the PostgreSQL witness's URL "
        "(libpq's password ways; a role that may read audit_checkpoints); needs "
        "--checkpoint-key",
    )
    check.add_argument(
        "--checkpoint-key",
        type=_checkpoint_verifier,
        help="the checkpoint verifier key checkpoint-init printed",
    )
    check.add_argument(
        "--processes",
        type=_processes,
        default=len(os.sched_getaffinity(0)),
        metavar="N",
        help="check a large uncompressed file in N parts at once (default: one for each CPU "
        "this command may use)",
    )
    check.set_defaults(handler=_verify)
    init = audit_commands.add_parser(
        "seal-init",
        help="start sealing the audit log: create the first epoch key, print the "
        "verification key once",
        description="Creates [audit] seal_key_file (owned by its directory's owner, "
        "0600) holding epoch 0's key, and prints the verification key, which is "
        "stored nowhere: keep it off this host. Restart the agent to begin sealing.",
    )
    init.add_argument("--config", required=True, type=Path)
    init.set_defaults(handler=_seal_init)
    signing = audit_commands.add_parser(
        "checkpoint-init",
        help="create the host's checkpoint signing key and print its verifier key",
        description="Creates [audit.checkpoints] key_file (an Ed25519 key, owned by its "
        "directory's owner, 0600) and prints the verifier key that checks its "
        "checkpoints. Restart the agent to begin.",
    )
    signing.add_argument("--config", required=True, type=Path)
    signing.set_defaults(handler=_checkpoint_init)


def _verification_key(text: str) -> VerificationKey:
    try:
        return VerificationKey.parse(text)
    except SealError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checkpoint_verifier(text: str) -> Verifier:
    try:
        return Verifier.parse(text)
    except CheckpointError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _processes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_PROCESSES}")
    return int(text)


def _verify(options: argparse.Namespace) -> int:
    checkpoints = None
    if options.checkpoints is not None:
        if options.checkpoint_key is None:
            print("--checkpoints needs --checkpoint-key", file=sys.stderr)
            return EXIT_USAGE
        checkpoints = load_checkpoints(options.checkpoints, options.checkpoint_key)
    result = verify(
        options.files,
        seal_key=options.seal_key,
        unmarked_head=options.unmarked_head,
        checkpoints=checkpoints,
        processes=options.processes,
    )
    if not result.ok:
        print(f"BROKEN after {result.records} good records: {result.error}")
        return EXIT_FAILED
    span = f"seq {result.first_seq}..{result.last_seq}" if result.records else "empty"
    print(f"OK: {result.records} records ({span}), head {result.head}")
    if options.seal_key is not None and result.sealed_epoch is None:
        print(f"no epoch sealed yet: {result.unsealed} records, all in epoch 0")
    elif options.seal_key is not None:
        print(
            f"sealed through epoch {result.sealed_epoch} (the seal at seq {result.sealed_seq}); "
            f"{result.unsealed} records since, in the current epoch, not sealed yet"
        )
    if checkpoints is not None:
        print(f"{result.witnessed} of {len(checkpoints)} checkpoints checked against the files")
    return EXIT_OK


def _seal_init(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    path = config.audit.seal_key_file
    if path is None:
        raise ConfigError(str(options.config), ["audit.seal_key_file: is not set"])
    seed = new_seed()
    epochs = Epochs(int(time.time()), config.audit.seal_epoch_seconds)
    directory = os.stat(path.parent)
    try:
        SealKey.create(path, seed, epochs, (directory.st_uid, directory.st_gid))
    except SealError as exc:
        raise ConfigError(str(options.config), [f"audit.seal_key_file: {exc}"]) from exc
    key = str(VerificationKey(seed, epochs))
    print(
        f"Sealing begins: epoch 0 started {stamp(epochs.start)}, one epoch every "
        f"{epochs.interval} s; {path} holds its key.\n"
        "The verification key, shown this once and stored nowhere; keep it off this host:\n"
        f"\n    {key}\n"
    )
    if sys.stdout.isatty():
        import segno  # only to show the key as a QR code

        segno.make(key, error="m").terminal(compact=True)
    print(
        "Restart the agent to begin sealing. Check the log with\n"
        "    host-agent audit verify --seal-key KEY ROTATED-FILES... "
        f"{config.audit.log_path}\n"
        "naming the rotated files oldest first."
    )
    return EXIT_OK


def _checkpoint_init(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    wanted = config.audit.checkpoints
    if wanted is None:
        raise ConfigError(str(options.config), ["audit.checkpoints.key_file: is not set"])
    directory = os.stat(wanted.key_file.parent)
    try:
        key = SigningKey.create(wanted.key_file, wanted.name, (directory.st_uid, directory.st_gid))
    except CheckpointError as exc:
        raise ConfigError(str(options.config), [f"audit.checkpoints.key_file: {exc}"]) from exc
    print(
        f"{wanted.key_file} holds the checkpoint key {wanted.name}. Its verifier key, for "
        f"whoever checks this host's checkpoints:\n\n    {key.verifier}\n\n"
        "Restart the agent to begin. Check the log against a witness with\n"
        "    host-agent audit verify --checkpoint-key VERIFIER --checkpoints SOURCE FILE..."
    )
    return EXIT_OK
