#!/usr/bin/env bash
# The two things a newcomer does: `./run.sh demo` and `./run.sh test`.
# Both install what they need on a fresh Debian machine (QEMU; for the tests also PostgreSQL 15, chromium and libvirt,
# all from Debian packages; NuGet restore).
set -euo pipefail
cd "$(dirname "$0")"

need_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  { command -v qemu-img >/dev/null && command -v qemu-nbd >/dev/null && command -v qemu-io >/dev/null; } || missing+=(qemu-utils)
  # the PostgreSQL journal tests and the control-plane bench start their own server from these binaries (the service
  # itself stays off); the libvirt adapter's tests and the copy bench's stall sessions run against a libvirtd this script
  # starts (never libvirt-daemon-system: it would replace init)
  case "${1:-}" in tests|bench)
    [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
    [ -x /usr/sbin/libvirtd ] || missing+=(libvirt-daemon libvirt-daemon-driver-qemu)
    command -v virsh >/dev/null || missing+=(libvirt-clients)
    ;;
  esac
  # the dashboard's browser test drives Debian's chromium (Playwright never downloads one)
  if [ "${1:-}" = tests ]; then
    command -v chromium >/dev/null || missing+=(chromium)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian packages…" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

build() {
  export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  dotnet build LiveMigration.Akka.sln -c Release -nologo -v quiet -clp:ErrorsOnly
}

case "${1:-}" in
  demo)
    shift
    need_packages
    build
    exec dotnet src/Demo/bin/Release/net10.0/LiveMigration.Demo.dll "$@"
    ;;
  test)
    shift
    need_packages tests
    # one libvirtd for every test project that needs it (they run in parallel; a fixture stops only a daemon it started)
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    libvirtd_state=$($SUDO deploy/libvirt/setup.sh | tail -n 1)
    echo "$libvirtd_state" >&2
    # …and stopped by its pid afterwards when this run started it
    case "$libvirtd_state" in "libvirtd started "*) trap "$SUDO kill ${libvirtd_state##* } 2>/dev/null || true" EXIT ;; esac
    build
    mkdir -p artifacts
    log=artifacts/test-output.txt
    set +e
    dotnet test LiveMigration.Akka.sln -c Release --no-build -nologo \
      --logger "console;verbosity=normal" --results-directory artifacts/test-results "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # One plain closing line for CI, summed over the test projects.
    sum() { grep -oE "$1: +[0-9]+" "$log" | awk '{ n += $2 } END { print n + 0 }'; }
    # CI keeps only the output's tail: name each failed test and the first lines of its message right above the total
    if grep -qE '^ +Failed ' "$log"; then
      echo "Failed tests:"
      grep -E -A 6 '^ +Failed ' "$log" | grep -vE '^ +(Passed|Skipped) ' | cut -c1-400 | head -n 80
    fi
    echo "$(sum Passed) passed, $(sum Failed) failed, $(sum Skipped) skipped"
    exit "$status"
    ;;
  bench)
    # Benchmarks on real processes; each writes its JSON under var/bench/. "copy": the copy path against qemu-img convert;
    # "copy-layers": the SPM's copy of the layers alone against qemu-img convert (no cluster);
    # "control-plane": sim migrations through a Coordinator and sim hosts (overhead, throughput, API latency, memory).
    shift
    need_packages bench
    # the copy bench measures the libvirt adapter too: a libvirtd for it, stopped afterwards when this run started it
    # (best effort: the other benches need none, and the copy bench says when libvirt is missing)
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    libvirtd_state=$($SUDO deploy/libvirt/setup.sh | tail -n 1) || libvirtd_state="libvirtd unavailable"
    echo "$libvirtd_state" >&2
    case "$libvirtd_state" in "libvirtd started "*) trap "$SUDO kill ${libvirtd_state##* } 2>/dev/null || true" EXIT ;; esac
    build
    dotnet src/Demo/bin/Release/net10.0/LiveMigration.Demo.dll bench "$@"
    ;;
  simulate)
    # The saga's deterministic simulation only (no QEMU, no cluster): LSM_SIM_SEEDS=N seeds (default 2000),
    # LSM_SIM_SEED=S replays one seed with its trace; the summary goes to var/faults/simulation.json.
    shift
    export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
    dotnet build tests/LiveMigration.Coordinator.Tests -c Release -nologo -v quiet -clp:ErrorsOnly
    exec dotnet test tests/LiveMigration.Coordinator.Tests -c Release --no-build -nologo \
      --filter "FullyQualifiedName~LiveMigration.Coordinator.Tests.Simulation" --logger "console;verbosity=detailed" "$@"
    ;;
  faults)
    # The fault matrix: the saga's seeded simulation (20,000 seeds; --quick: 2,000) and the crash cases against real
    # processes and QEMU (tests/LiveMigration.Cli.Tests/Faults/); the report goes to var/faults/report.json.
    # Without --quick, LSM_FAULTS_FULL=1 adds the full crash matrix (every step x moment x fault, FullFaultMatrixTests).
    shift
    seeds=20000
    full=1
    if [ "${1:-}" = --quick ]; then seeds=2000; full=0; shift; fi
    need_packages
    build
    mkdir -p var/faults
    rm -f var/faults/cases.jsonl var/faults/report.json var/faults/report.txt
    set +e
    LSM_SIM_SEEDS=$seeds dotnet test tests/LiveMigration.Coordinator.Tests -c Release --no-build -nologo \
      --filter "FullyQualifiedName~LiveMigration.Coordinator.Tests.Simulation" "$@"
    simulation=$?
    LSM_FAULTS_FULL=$full dotnet test tests/LiveMigration.Cli.Tests -c Release --no-build -nologo --filter "FullyQualifiedName~LiveMigration.Cli.Tests.Faults" "$@"
    cases=$?
    set -e
    [ -f var/faults/report.txt ] && cat var/faults/report.txt
    echo "report: var/faults/report.json"
    [ "$simulation" -eq 0 ] && [ "$cases" -eq 0 ]
    ;;
  *)
    echo "usage: ./run.sh demo [--data-dir DIR] [--hypervisor qmp|libvirt]   run the demo (migrates a running VM's disk while it writes)" >&2
    echo "       ./run.sh test [dotnet test args]  run the whole test suite" >&2
    echo "       ./run.sh simulate                 the saga's seeded fault simulation (LSM_SIM_SEEDS=N, LSM_SIM_SEED=S to replay one)" >&2
    echo "       ./run.sh faults [--quick]         the fault matrix: simulation and crash cases on real processes; var/faults/report.json" >&2
    echo "       ./run.sh bench copy [--runs N]    the copy path through the cluster against qemu-img convert; var/bench/copy.json" >&2
    echo "       ./run.sh bench control-plane      sim migrations through the control plane; var/bench/control-plane.json" >&2
    exit 2
    ;;
esac
