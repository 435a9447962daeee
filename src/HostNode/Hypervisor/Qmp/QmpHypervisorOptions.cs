using LiveMigration.HostNode.Processes;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

public sealed record QmpHypervisorOptions
{
    /// <summary>Where manifests (<c>vms/&lt;vmId&gt;.json</c>), pid files and logs live; a restarted host adopts from here.</summary>
    public required string RunDirectory { get; init; }
    public string QemuBinary { get; init; } = "qemu-system-x86_64";
    /// <summary>The longest a single QMP command, or a wait for a block job's end, may take.</summary>
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>The unprivileged account QEMU runs as (<c>--qemu-user</c>); null runs it as the host's own user.</summary>
    public QemuAccount? QemuAccount { get; init; }
}
