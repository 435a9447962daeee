using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// The SPM's part of the operator's commands: the storage changes (a new domain, the images of a new VM, the
/// volumes of a live snapshot). Every request is checked whole before anything is written, so a refusal changes nothing.
/// </summary>
/// <param name="announce">Tells every host about a domain created here (the SPM publishes <see cref="AttachDomain"/>).</param>
public sealed class SpmStorage(StoragePool pool, Action<AttachDomain> announce)
{
    public const int MaxSnapshots = 32;
    /// <summary>What each empty qcow2 layer is counted for when checking space (header and tables).</summary>
    private const long QcowLayerBytes = 1 << 20;

    // One storage change at a time: two creates must not both pass the space or the name check.
    private readonly SemaphoreSlim _oneAtATime = new(1, 1);

    /// <summary>Runs one command; a refusal comes back as <see cref="ManagementRefused"/>, never as an exception.</summary>
    public async Task<IManagementMessage> HandleAsync(IManagementMessage command, CancellationToken ct = default)
    {
        await _oneAtATime.WaitAsync(ct);
        try
        {
            return command switch
            {
                CreateDomain c => await CreateDomainAsync(c, ct),
                CreateVmDisks c => await CreateVmDisksAsync(c, ct),
                CreateSnapshotVolumes c => await CreateSnapshotVolumesAsync(c, ct),
                DeleteVmDisks c => await DeleteVmDisksAsync(c, ct),
                _ => new ManagementRefused(ErrorCodes.InvalidArgument, $"the SPM does not handle {command.GetType().Name}"),
            };
        }
        catch (OperationFailedException e)
        {
            return new ManagementRefused(e.Code, e.Message);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A path the SPM cannot write (a read-only or special file system, no permission): the operator's to fix.
            return new ManagementRefused(ErrorCodes.IoError, $"{command.GetType().Name}: {e.Message}");
        }
        finally
        {
            _oneAtATime.Release();
        }
    }

    private async Task<IManagementMessage> CreateDomainAsync(CreateDomain command, CancellationToken ct)
    {
        if (!Path.IsPathFullyQualified(command.Root))
            return new ManagementRefused(ErrorCodes.InvalidArgument, $"the domain's path must be absolute, got '{command.Root}'");
        // The folder is made by this host, so this host decides where: only under a root it allows, judged by the real
        // path (.. and symlinks followed), which is what is created and announced from here on.
        var root = pool.AllowedRoots.Check(command.Root);
        if (command.CapacityBytes < 0)
            return new ManagementRefused(ErrorCodes.InvalidArgument, $"capacity must be positive (or 0 for the free space), got {command.CapacityBytes}");
        // Checked here too, before the folder below is made: a refused name leaves nothing behind.
        DomainMetadata.ValidateName(command.Name);
        // By the names read at attach: a domain not reachable now (unmounted) keeps its name and does not refuse a new one.
        if (pool.Domains.FirstOrDefault(d => d.Name == command.Name) is { } existing)
            return new ManagementRefused(ErrorCodes.Conflict, $"a storage domain named '{command.Name}' exists already ({existing.Id})");
        // A new domain is a storage change like any other: only the lease's holder makes it, and the lease is not given up
        // while it is being made.
        using var change = pool.Fence is { } fence ? await fence.BeginChangeAsync(ct) : null;
        var domain = await pool.DomainFactory.CreateAsync(root, DomainId.New(), command.Name, command.CapacityBytes, ct);
        pool.Attach(domain);
        announce(new AttachDomain(domain.Id, root));
        var described = await domain.DescribeAsync(ct);
        return new DomainCreated(new DomainReport(described.Id, described.Name, described.Kind, described.CapacityBytes,
            described.UsedBytes, described.AvailableBytes, Active: true), root);
    }

    private async Task<IManagementMessage> CreateVmDisksAsync(CreateVmDisks command, CancellationToken ct)
    {
        if (command.Disks.Count == 0)
            return new ManagementRefused(ErrorCodes.InvalidArgument, $"VM {command.Vm} needs at least one disk");
        foreach (var disk in command.Disks)
        {
            if (disk.SizeBytes <= 0 || disk.SizeBytes % 512 != 0)
                return new ManagementRefused(ErrorCodes.InvalidArgument, $"a disk's size must be a positive multiple of 512 bytes, got {disk.SizeBytes}");
            if (disk.Snapshots is < 0 or > MaxSnapshots)
                return new ManagementRefused(ErrorCodes.InvalidArgument, $"snapshots must be between 0 and {MaxSnapshots}, got {disk.Snapshots}");
            if (!Enum.IsDefined(disk.BaseFormat) || !Enum.IsDefined(disk.BaseAllocation))
                return new ManagementRefused(ErrorCodes.InvalidArgument, $"a disk's base is raw or qcow2, sparse or preallocated; got {disk.BaseFormat}, {disk.BaseAllocation}");
        }
        // Space first, per domain, for all the disks together: either all are made or none.
        foreach (var group in command.Disks.GroupBy(d => d.Domain))
        {
            var info = await pool.Get(group.Key).DescribeAsync(ct);
            var needed = group.Sum(d => d.SizeBytes + d.Snapshots * QcowLayerBytes);
            if (needed > info.AvailableBytes)
                return new ManagementRefused(ErrorCodes.NotEnoughSpace,
                    $"storage domain {info.Name} ({info.Id}) has {info.AvailableBytes} bytes available; the disks asked of it need {needed} bytes");
        }
        var created = new List<DiskLeaf>();
        try
        {
            foreach (var disk in command.Disks)
                created.Add(await CreateDiskAsync(pool.Get(disk.Domain), disk, ct));
        }
        catch (OperationFailedException)
        {
            // Half a VM is no use to anyone: remove what this request made.
            foreach (var leaf in created)
                await pool.Get(leaf.Leaf.Domain).DeleteImageAsync(leaf.Image, CancellationToken.None);
            throw;
        }
        return new VmDisksCreated(command.Vm, created.ToValueList());
    }

    private static async Task<DiskLeaf> CreateDiskAsync(IStorageDomain domain, NewDisk disk, CancellationToken ct)
    {
        var image = ImageId.New();
        var top = await domain.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), disk.BaseFormat, disk.SizeBytes, Allocation: disk.BaseAllocation), null, ct);
        for (var i = 0; i < disk.Snapshots; i++)
            top = await domain.CreateVolumeAsync(
                new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, disk.SizeBytes, new VolumeRef(domain.Id, top.Id)), null, ct);
        return new DiskLeaf(image, new VolumeRef(domain.Id, top.Id));
    }

    private async Task<IManagementMessage> DeleteVmDisksAsync(DeleteVmDisks command, CancellationToken ct)
    {
        foreach (var disk in command.Disks)
            await pool.Get(disk.Leaf.Domain).DeleteImageAsync(disk.Image, ct);
        return new VmDisksDeleted(command.Vm);
    }

    private async Task<IManagementMessage> CreateSnapshotVolumesAsync(CreateSnapshotVolumes command, CancellationToken ct)
    {
        var leaves = new List<(IStorageDomain Domain, DiskLeaf Leaf, VolumeInfo Info)>();
        foreach (var leaf in command.CurrentLeaves)
        {
            var domain = pool.Get(leaf.Leaf.Domain);
            leaves.Add((domain, leaf, await domain.DescribeVolumeAsync(leaf.Image, leaf.Leaf.Volume, ct)));
        }
        var created = new List<DiskLeaf>();
        foreach (var (domain, leaf, info) in leaves)
        {
            var overlay = await domain.CreateVolumeAsync(
                new NewVolume(leaf.Image, VolumeId.New(), VolumeFormat.Cow, info.Capacity, leaf.Leaf), null, ct);
            created.Add(new DiskLeaf(leaf.Image, new VolumeRef(domain.Id, overlay.Id)));
        }
        return new SnapshotVolumesCreated(command.Vm, created.ToValueList());
    }
}
