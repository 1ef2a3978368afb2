#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, idempotently (it does nothing when everything
# is there):
# - qemu-user (Debian), to run the engine as other CPUs: the portable-numerics tests compare
#   runs natively and under `qemu-x86_64 -cpu max` / `-cpu Nehalem`;
# - strace (Debian), to count the files a command opens;
# - slurm-wlm and munge (Debian), for a one-node Slurm cluster that runs sharded verification;
# - Open MPI and libclang (Debian), to build and run data-parallel training;
# - a Python venv with moto's S3 server, used by the S3 integration tests on 127.0.0.1, and the
#   ecosystem's verifiers that the attestation tests run on our artefacts: OpenSSF
#   model-signing (with pyOpenSSL, which its CLI imports) and securesystemslib (DSSE, as in-toto
#   uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -m)" = x86_64 ] && [ ! -x /usr/bin/qemu-x86_64 ] && [ -z "${QEMU_X86_64:-}" ]; then
  echo "installing qemu-user for the portability tests"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user > /dev/null \
    || { $sudo apt-get update -q > /dev/null \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user > /dev/null; }
fi

# strace: the test that `replay investigate` reads the run once counts the files it opens.
if ! command -v strace > /dev/null; then
  echo "installing strace for the test that counts what replay reads"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace > /dev/null \
    || { $sudo apt-get update -q > /dev/null \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace > /dev/null; }
fi

# Slurm (slurm-wlm) and munge: the cluster tests start a one-node Slurm cluster and run sharded
# verification as a job array.
if ! command -v sbatch > /dev/null || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then
  echo "installing slurm-wlm and munge for the cluster tests"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurm-wlm munge > /dev/null \
    || { $sudo apt-get update -q > /dev/null \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
              --no-install-recommends slurm-wlm munge > /dev/null; }
fi

# Open MPI (with PMIx, which Slurm's srun uses to start MPI processes) and libclang: the
# data-parallel tests build the trainer with MPI (rsmpi generates its bindings with bindgen) and
# run it under mpirun and srun.
if ! command -v mpirun > /dev/null || ! command -v mpicc > /dev/null \
  || ! /sbin/ldconfig -p | grep -q libclang; then
  echo "installing Open MPI and libclang for the data-parallel tests"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      openmpi-bin libopenmpi-dev libclang-dev > /dev/null \
    || { $sudo apt-get update -q > /dev/null \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
              --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev > /dev/null; }
fi

if [ ! -x .venv/bin/moto_server ]; then
  echo "setting up .venv with moto[server] for the S3 tests"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
  .venv/bin/moto_server --help > /dev/null
fi

if ! .venv/bin/python -c 'import model_signing, securesystemslib, OpenSSL' 2> /dev/null; then
  echo "installing model-signing and securesystemslib into .venv for the attestation tests"
  .venv/bin/pip install --quiet --disable-pip-version-check 'model-signing==1.1.1' \
    'securesystemslib==1.6.0' 'pyopenssl>=25,<26'
  .venv/bin/model_signing --help > /dev/null
fi
