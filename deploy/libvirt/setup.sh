#!/usr/bin/env bash
# Makes this machine a libvirt host for a HostNode (`--hypervisor libvirt`), idempotently:
# the packages (never libvirt-daemon-system: it would replace init), the libvirt-qemu user and group
# libvirtd looks up before it reads its configuration, /etc/libvirt/qemu.conf (QEMU runs as root,
# its stdio goes to files so no virtlogd is needed), and libvirtd itself, started in the background
# when it does not run yet. Waits until `virsh -c qemu:///system version` answers.
# Last line of output: `libvirtd started <pid>` (this run started it; stop it by that pid) or
# `libvirtd running <pid>` (it ran already; leave it alone).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then echo "setup.sh must run as root (libvirtd runs QEMU as root here)" >&2; exit 2; fi

# Test projects run in parallel and each calls this: one at a time, so only one libvirtd is ever started.
exec 9>/run/lsm-libvirt-setup.lock
flock 9

missing=()
for package in libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian packages…" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu

mkdir -p /etc/libvirt
wanted='# Written by deploy/libvirt/setup.sh (LiveMigration.Akka).
# QEMU runs as root so it opens the storage domains as the HostNode does; its stdio goes to
# /var/log/libvirt/qemu/<name>.log directly, so no virtlogd is needed.
user = "root"
group = "root"
stdio_handler = "file"'
if [ ! -f /etc/libvirt/qemu.conf ] || [ "$(cat /etc/libvirt/qemu.conf)" != "$wanted" ]; then
  [ -f /etc/libvirt/qemu.conf ] && cp /etc/libvirt/qemu.conf /etc/libvirt/qemu.conf.before-lsm
  printf '%s\n' "$wanted" > /etc/libvirt/qemu.conf
  restart_needed=1
fi

running_pid() {
  local pid
  pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
  if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = libvirtd ]; then echo "$pid"; fi
}

state=running
pid=$(running_pid)
if [ -n "$pid" ] && [ "${restart_needed:-0}" = 1 ]; then
  echo "qemu.conf changed: restarting libvirtd (pid $pid)" >&2
  kill "$pid"
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  pid=
fi
if [ -z "$pid" ]; then
  mkdir -p /var/log/libvirt /run/libvirt
  # 9>&-: the daemon must not inherit the lock, or it holds it for its whole life and every later run waits
  libvirtd --daemon --pid-file /run/libvirtd.pid 9>&-
  state=started
fi

for _ in $(seq 300); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    pid=$(running_pid)
    [ -n "$pid" ] || { echo "libvirtd answered but /run/libvirtd.pid names no libvirtd" >&2; exit 1; }
    echo "libvirtd $state $pid"
    exit 0
  fi
  sleep 0.1
done
echo "libvirtd did not answer 'virsh -c qemu:///system version' within 30 s" >&2
exit 1
