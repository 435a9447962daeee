#!/bin/sh
# Makes the unprivileged account QMP hosts run QEMU as (HostNode --qemu-user lsm-qemu), as installing libvirt makes
# its qemu user: a system account with its own group, no home and no login. Run once per hypervisor machine, as root.
# The HostNode gives this group its volumes (0660) and folders (2750) and QEMU's socket folder; nothing else.
set -eu
name=${1:-lsm-qemu}
if getent passwd "$name" >/dev/null; then
  echo "$name exists: $(id "$name")"
  exit 0
fi
useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$name"
echo "made $name: $(id "$name")"
