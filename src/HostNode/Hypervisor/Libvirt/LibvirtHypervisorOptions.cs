namespace LiveMigration.HostNode.Hypervisor.Libvirt;

public sealed record LibvirtHypervisorOptions
{
    /// <summary>The libvirt connection URI (<c>--libvirt-uri</c>).</summary>
    public string Uri { get; init; } = "qemu:///system";

    /// <summary>
    /// This host's own folder: the guest NBD sockets live below it (or under a short /tmp stand-in), and its full
    /// path, written into each domain's metadata, tells this host's domains from another host's on the same libvirt.
    /// </summary>
    public required string RunDirectory { get; init; }

    /// <summary>Every domain this host starts is named <c>PREFIX + vm id</c>; adoption looks only at those.</summary>
    public string NamePrefix { get; init; } = "lsm-";

    /// <summary>
    /// Exports each drive over NBD (writable, on the drive's active node) so a stand-in guest (the workload of the
    /// demo and tests; our VMs boot no OS) can write to it. It needs a QMP pass-through (<c>virDomainQemuMonitorCommand</c>),
    /// which taints the domain as <c>custom-monitor</c>, and the disks' devices opened with <c>share-rw</c>: an opt-in
    /// for test and demo hosts only (<c>--libvirt-guest-export true</c>). Real guests write through their virtio disks.
    /// </summary>
    public bool GuestNbdExport { get; init; }

    /// <summary>At least this much memory, whatever the VM spec asks: the default machine's firmware needs room.</summary>
    public int MinimumMemoryMiB { get; init; } = 64;

    /// <summary>The longest a wait for a block job (ready, pivot) may take.</summary>
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);
}
