using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Tests.Storage.File;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Management;

/// <summary>The SPM's storage changes for the operator's commands, and what a host keeps of them, on real file domains.</summary>
public sealed class SpmStorageTests : IDisposable
{
    private const long MiB = 1L << 20;
    private readonly TempDomainRoot _root = new();
    private readonly StoragePool _pool;
    private readonly List<AttachDomain> _announced = [];
    private readonly SpmStorage _spm;

    public SpmStorageTests()
    {
        _pool = new StoragePool { AllowedRoots = new StorageRootPolicy([_root.Root]) };
        _spm = new SpmStorage(_pool, _announced.Add);
    }

    public void Dispose() => _root.Dispose();

    private string Shared => Path.Combine(_root.Root, "shared");

    private async Task<DomainReport> CreateDomainAsync(string name, long capacity)
    {
        var reply = await _spm.HandleAsync(new CreateDomain(name, Shared, capacity));
        return Assert.IsType<DomainCreated>(reply).Domain;
    }

    [Fact]
    public async Task A_created_domain_is_attached_announced_to_every_host_and_a_second_one_with_its_name_is_refused()
    {
        var domain = await CreateDomainAsync("fast", 256 * MiB);
        Assert.Equal(256 * MiB, domain.CapacityBytes);
        Assert.Equal(domain.Id, Assert.Single(_pool.Domains).Id);
        var announced = Assert.Single(_announced);
        Assert.Equal(new AttachDomain(domain.Id, Shared), announced);

        var twice = Assert.IsType<ManagementRefused>(await _spm.HandleAsync(new CreateDomain("fast", Shared, 256 * MiB)));
        Assert.Equal(ErrorCodes.Conflict, twice.Code);
        var relative = Assert.IsType<ManagementRefused>(await _spm.HandleAsync(new CreateDomain("other", "relative/dir", 256 * MiB)));
        Assert.Equal(ErrorCodes.InvalidArgument, relative.Code);
        Assert.Single(_pool.Domains);
        Assert.Single(Directory.GetDirectories(Shared));
    }

    [Fact]
    public async Task Vm_disks_are_made_with_the_base_shape_asked_and_sparse_qcow2_layers_over_it()
    {
        var domain = await CreateDomainAsync("fast", 256 * MiB);
        var created = Assert.IsType<VmDisksCreated>(await _spm.HandleAsync(new CreateVmDisks(VmId.New(),
        [
            new NewDisk(16 * MiB, domain.Id, 0, VolumeFormat.Raw, VolumeAllocation.Preallocated),
            new NewDisk(16 * MiB, domain.Id, 2, VolumeFormat.Cow, VolumeAllocation.Preallocated),
            new NewDisk(16 * MiB, domain.Id, 0, VolumeFormat.Cow),
        ])));
        var shapes = new List<string>();
        foreach (var disk in created.Disks)
        {
            var volumes = (await _pool.Get(domain.Id).DescribeImageAsync(disk.Image)).Volumes;
            shapes.Add(string.Join(" < ", volumes.Select(v => $"{v.Format} {v.Allocation}")));
        }
        Assert.Equal(["Raw Preallocated", "Cow Preallocated < Cow Sparse < Cow Sparse", "Cow Sparse"], shapes);
        var rawBase = await _pool.Get(domain.Id).DescribeImageAsync(created.Disks[0].Image);
        Assert.True(rawBase.Volumes[0].AllocatedBytes >= 16 * MiB, $"the preallocated raw base takes {rawBase.Volumes[0].AllocatedBytes} bytes");
    }

    [Fact]
    public async Task Vm_disks_are_made_with_their_snapshots_and_a_vm_that_does_not_fit_makes_nothing()
    {
        var domain = await CreateDomainAsync("fast", 128 * MiB);
        var vm = VmId.New();
        var created = Assert.IsType<VmDisksCreated>(await _spm.HandleAsync(new CreateVmDisks(vm,
            [new NewDisk(32 * MiB, domain.Id, Snapshots: 2), new NewDisk(16 * MiB, domain.Id, 0)])));
        Assert.Equal(2, created.Disks.Count);
        var chains = new List<int>();
        foreach (var disk in created.Disks)
        {
            var leaf = await _pool.Get(domain.Id).DescribeVolumeAsync(disk.Image, disk.Leaf.Volume);
            var chain = await _pool.ResolveChainAsync(leaf);
            chains.Add(chain.Layers.Count);
            Assert.Equal(VolumeFormat.Raw, chain.Layers[0].Format);
        }
        Assert.Equal([3, 1], chains);

        var imagesBefore = await _pool.Get(domain.Id).ListImagesAsync();
        var refused = Assert.IsType<ManagementRefused>(await _spm.HandleAsync(new CreateVmDisks(VmId.New(),
            [new NewDisk(80 * MiB, domain.Id, 0), new NewDisk(64 * MiB, domain.Id, 0)])));
        Assert.Equal(ErrorCodes.NotEnoughSpace, refused.Code);
        Assert.Contains($"need {144 * MiB} bytes", refused.Message);
        Assert.Equal(imagesBefore.ToHashSet(), (await _pool.Get(domain.Id).ListImagesAsync()).ToHashSet());

        var unknown = Assert.IsType<ManagementRefused>(await _spm.HandleAsync(new CreateVmDisks(VmId.New(), [new NewDisk(MiB, DomainId.New(), 0)])));
        Assert.Equal(ErrorCodes.DomainNotFound, unknown.Code);

        // a VM whose host refused to start it: its disks go
        Assert.IsType<VmDisksDeleted>(await _spm.HandleAsync(new DeleteVmDisks(vm, created.Disks)));
        Assert.Empty(await _pool.Get(domain.Id).ListImagesAsync());
    }

    [Fact]
    public async Task Snapshot_volumes_lie_over_the_current_leaves_and_a_stopped_vm_reports_the_longer_chain()
    {
        var domain = await CreateDomainAsync("fast", 128 * MiB);
        var vm = VmId.New();
        var disk = Assert.Single(Assert.IsType<VmDisksCreated>(await _spm.HandleAsync(new CreateVmDisks(vm, [new NewDisk(16 * MiB, domain.Id, 1)]))).Disks);
        var made = Assert.IsType<SnapshotVolumesCreated>(await _spm.HandleAsync(new CreateSnapshotVolumes(vm, [disk])));
        var newLeaf = Assert.Single(made.NewLeaves);
        var info = await _pool.Get(domain.Id).DescribeVolumeAsync(disk.Image, newLeaf.Leaf.Volume);
        Assert.Equal(disk.Leaf, info.Parent);
        Assert.Equal(VolumeFormat.Cow, info.Format);

        // what a host keeps of a stopped VM and reports of it
        var catalog = new VmCatalog(Path.Combine(_root.Root, "host-data"));
        catalog.Save(new CatalogedVm(vm, "web", [newLeaf]));
        var kept = Assert.Single(new VmCatalog(Path.Combine(_root.Root, "host-data")).All());
        Assert.Equal(vm, kept.Id);
        Assert.Equal(newLeaf, Assert.Single(kept.Drives));
        var report = await VmReports.OfStoppedAsync(kept, _pool);
        Assert.False(report.Running);
        var drive = Assert.Single(report.Drives);
        Assert.Equal(3, drive.Chain.Count);
        Assert.Equal(newLeaf.Leaf, drive.Chain[^1]);
        Assert.Equal(16 * MiB, drive.CapacityBytes);
    }

    /// <summary>
    /// A running drive over two domains, its leaf on one that is unmounted now, or was when this host started (so never
    /// attached here). Its leaf is never read from the part of the chain the host can see: a record naming the last
    /// visible layer would start the VM without the writes above it. A new domain is still made meanwhile.
    /// </summary>
    [Fact]
    public async Task A_running_drive_whose_leaf_lies_on_a_domain_unreachable_or_not_attached_here_has_no_leaf_read_from_part_of_its_chain()
    {
        await using var mount = await BindMount.MountAsync(Path.Combine(_root.Root, "exported"));
        var a = await CreateDomainAsync("a", 128 * MiB);
        var b = await FileStorageDomain.CreateAsync(mount.Path, DomainId.New(), "b", 128 * MiB);
        _pool.Attach(b);
        var image = ImageId.New();
        var (baseId, leafId) = (VolumeId.New(), VolumeId.New());
        var onA = _pool.Get(a.Id);
        await onA.CreateVolumeAsync(new NewVolume(image, baseId, VolumeFormat.Raw, 16 * MiB));
        await b.CreateVolumeAsync(new NewVolume(image, leafId, VolumeFormat.Cow, 16 * MiB, new VolumeRef(a.Id, baseId)), onA);
        var vm = new VmInfo(VmId.New(), "web", 1, true,
            [new DriveState(image, [onA.Locate(image, baseId), b.Locate(image, leafId)], "", "", null)]);
        Assert.Equal(new VolumeRef(b.Id, leafId), Assert.Single(await VmReports.CurrentLeavesAsync(vm, _pool)).Leaf);

        await mount.UnmountAsync();
        await TempDomainRoot.RefusedAsync(ErrorCodes.IoError, () => VmReports.CurrentLeavesAsync(vm, _pool));
        Assert.Empty(Assert.Single((await VmReports.OfRunningAsync(vm, _pool)).Drives).Chain);
        Assert.IsType<DomainCreated>(await _spm.HandleAsync(new CreateDomain("c", Shared, 64 * MiB)));
        Assert.Equal(ErrorCodes.Conflict, Assert.IsType<ManagementRefused>(await _spm.HandleAsync(new CreateDomain("b", Shared, 64 * MiB))).Code);

        var startedWithoutB = new StoragePool { AllowedRoots = _pool.AllowedRoots };
        startedWithoutB.Attach(onA);
        var partial = await TempDomainRoot.RefusedAsync(ErrorCodes.VolumeNotFound, () => VmReports.CurrentLeavesAsync(vm, startedWithoutB));
        Assert.Contains("partial chain", partial.Message);
        await mount.MountAgainAsync();
    }

    [Fact]
    public async Task A_host_attaches_the_domains_under_a_remembered_root_again_after_a_restart()
    {
        var domain = await CreateDomainAsync("fast", 64 * MiB);
        var hostData = Path.Combine(_root.Root, "host-data");
        var roots = new DomainRoots(hostData);
        await roots.RememberAsync(Shared);
        await roots.RememberAsync(Shared);
        Assert.Equal([Shared], roots.Remembered());

        // the host restarted: a new pool from its configured roots (none here), then the remembered ones
        var restarted = new StoragePool { AllowedRoots = _pool.AllowedRoots };
        Assert.Equal(1, await new DomainRoots(hostData).AttachRememberedAsync(restarted));
        Assert.Equal(domain.Id, Assert.Single(restarted.Domains).Id);
        Assert.Equal(0, await new DomainRoots(hostData).AttachRememberedAsync(restarted));
    }
}
