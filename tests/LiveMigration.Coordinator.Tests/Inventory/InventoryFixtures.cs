using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>A small pool (the same values on every call, so a report can be repeated): host-1 runs a VM with a 3-volume chain whose leaf is on domain A (base on B), domains A and B.</summary>
public sealed class InventoryFixtures
{
    public static readonly DateTimeOffset T0 = new(2025, 1, 1, 12, 0, 0, TimeSpan.Zero);

    public VmId Vm { get; } = VmId.New();
    public ImageId Disk { get; } = ImageId.New();
    public ImageId SecondDisk { get; } = ImageId.New();
    public DomainId DomainA { get; } = DomainId.New();
    public DomainId DomainB { get; } = DomainId.New();
    private readonly VolumeId[] _volumes = [VolumeId.New(), VolumeId.New(), VolumeId.New(), VolumeId.New()];
    /// <summary>The leaf of <see cref="Disk"/>'s chain (on domain A) and of <see cref="SecondDisk"/>'s (on B).</summary>
    public VolumeId DiskLeaf => _volumes[2];
    public VolumeId SecondDiskLeaf => _volumes[3];

    public VmReport VmReport(bool running = true) => new(Vm, "web-01", running,
    [
        new DriveReport(Disk,
            [new VolumeRef(DomainB, _volumes[0]), new VolumeRef(DomainA, _volumes[1]), new VolumeRef(DomainA, _volumes[2])],
            CapacityBytes: 10L << 30, AllocatedBytes: 3L << 30),
        new DriveReport(SecondDisk, [new VolumeRef(DomainB, _volumes[3])], CapacityBytes: 4L << 30, AllocatedBytes: 1L << 30),
    ]);

    public HostStatusReport HostReport(string hostId = "host-1", DateTimeOffset? at = null, params VmReport[] vms) =>
        new(hostId, $"akka.tcp://lsm@127.0.0.1:{(hostId == "host-1" ? 4053 : 4054)}", SpmCapable: hostId == "host-1",
            vms.ToValueList(), at ?? T0);

    public DomainStatusReport DomainReport(long freeOnB = 50L << 30, bool bActive = true, DateTimeOffset? at = null) => new(
    [
        new DomainReport(DomainA, "domain-a", "file", 100L << 30, 60L << 30, 40L << 30, Active: true),
        new DomainReport(DomainB, "domain-b", "sim", 100L << 30, (100L << 30) - freeOnB, freeOnB, bActive),
    ], at ?? T0);
}
