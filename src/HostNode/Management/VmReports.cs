using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// What a host tells about its VMs: the running ones with the chains QEMU has open (mapped back to volumes of the
/// attached domains), and the stopped ones of its <see cref="VmCatalog"/> with the chains they start on.
/// </summary>
public static class VmReports
{
    /// <summary>Every VM of the host: the hypervisor's running ones, then the cataloged ones it does not run.</summary>
    public static async Task<IReadOnlyList<VmReport>> ListAsync(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog,
        CancellationToken ct = default) =>
        (await ListKeyedAsync(hypervisor, pool, catalog, reuse: null, ct)).Select(k => k.Report).ToList();

    /// <summary>
    /// Every VM of the host as <see cref="ListAsync"/>, each with the key of what its report was made from (the hypervisor's
    /// view of its drives, or its catalog record). <paramref name="reuse"/> may hand back an earlier report for a VM whose
    /// key is unchanged (the caller's kept report, with its time): describing a drive asks every attached domain for its image, which a host with thousands of VMs
    /// cannot afford for each of them after every step.
    /// </summary>
    public static async Task<IReadOnlyList<KeyedVmReport>> ListKeyedAsync(IHypervisor hypervisor, StoragePool pool, VmCatalog? catalog,
        Func<VmId, string, KeyedVmReport?>? reuse, CancellationToken ct = default)
    {
        var reports = new List<KeyedVmReport>();
        var running = new HashSet<VmId>();
        foreach (var vm in await hypervisor.ListVmsAsync(ct))
        {
            if (!vm.Running && catalog?.Find(vm.Id) is not null) continue;
            var key = KeyOf(vm);
            reports.Add(reuse?.Invoke(vm.Id, key) ?? new KeyedVmReport(await OfRunningAsync(vm, pool, ct), key, DateTimeOffset.UtcNow));
            running.Add(vm.Id);
        }
        foreach (var stopped in catalog?.All() ?? [])
            if (!running.Contains(stopped.Id))
            {
                // a QEMU from before a restart that could not be adopted runs on its recorded chain: not stopped
                var unadopted = await hypervisor.RunsUnadoptedAsync(stopped.Id, ct);
                var key = (unadopted ? "unadopted|" : "") + KeyOf(stopped);
                if (reuse?.Invoke(stopped.Id, key) is { } kept)
                {
                    reports.Add(kept);
                    continue;
                }
                var report = await OfStoppedAsync(stopped, pool, ct);
                reports.Add(new KeyedVmReport(unadopted ? report with { Running = true } : report, key, DateTimeOffset.UtcNow));
            }
        return reports;
    }

    private static string KeyOf(VmInfo vm) =>
        $"{(vm.Running ? "running" : "gone")}|{vm.Name}|" +
        string.Join(";", vm.Drives.Select(d => $"{d.Image}:{string.Join(",", d.OpenChain)}"));

    private static string KeyOf(CatalogedVm vm) =>
        $"stopped|{vm.Name}|" + string.Join(";", vm.Drives.Select(d => $"{d.Image}:{d.Leaf.Domain}/{d.Leaf.Volume}"));

    public static async Task<VmReport> OfRunningAsync(VmInfo vm, StoragePool pool, CancellationToken ct = default)
    {
        var drives = new List<DriveReport>();
        foreach (var drive in vm.Drives)
        {
            try
            {
                drives.Add(await DescribeDriveAsync(drive, pool, ct));
            }
            catch (OperationFailedException e) when (e.Code is ErrorCodes.IoError)
            {
                // a domain it may lie on is not reachable: reported without a chain (no move is admitted from that), not guessed
                drives.Add(new DriveReport(drive.Image, ValueList<VolumeRef>.Empty, 0, 0));
            }
        }
        return new VmReport(vm.Id, vm.Name, vm.Running, drives.ToValueList());
    }

    /// <summary>A stopped VM with each drive's chain resolved from its recorded leaf (empty when the leaf is gone).</summary>
    public static async Task<VmReport> OfStoppedAsync(CatalogedVm vm, StoragePool pool, CancellationToken ct = default)
    {
        var drives = new List<DriveReport>();
        foreach (var drive in vm.Drives)
        {
            try
            {
                var leaf = await pool.Get(drive.Leaf.Domain).DescribeVolumeAsync(drive.Image, drive.Leaf.Volume, ct);
                var chain = await pool.ResolveChainAsync(leaf, ct);
                var volumes = new List<VolumeInfo>();
                foreach (var layer in chain.Layers)
                    volumes.Add(await pool.Get(layer.Volume.Domain).DescribeVolumeAsync(drive.Image, layer.Volume.Volume, ct));
                drives.Add(new DriveReport(drive.Image, chain.Layers.Select(l => l.Volume).ToValueList(), leaf.Capacity,
                    volumes.Sum(v => v.AllocatedBytes), volumes[0].Format, volumes[0].Allocation));
            }
            catch (OperationFailedException e) when (e.Code is ErrorCodes.DomainNotFound or ErrorCodes.ImageNotFound or ErrorCodes.VolumeNotFound
                                                           or ErrorCodes.IoError)
            {
                drives.Add(new DriveReport(drive.Image, ValueList<VolumeRef>.Empty, 0, 0));
            }
        }
        return new VmReport(vm.Id, vm.Name, false, drives.ToValueList());
    }

    /// <summary>
    /// Maps the paths QEMU has open back to volumes of the attached domains. A path no reachable domain holds while some
    /// domain is not reachable fails IO_ERROR: the chain is not shortened by a guess (its last volume is what a restart opens).
    /// </summary>
    public static async Task<DriveReport> DescribeDriveAsync(DriveState drive, StoragePool pool, CancellationToken ct = default)
    {
        var chain = new List<VolumeRef>();
        VolumeInfo? baseVolume = null;
        long capacity = 0, allocated = 0;
        foreach (var path in drive.OpenChain)
        {
            OperationFailedException? unreachable = null;
            var found = false;
            foreach (var domain in pool.Domains)
            {
                VolumeInfo? volume;
                try
                {
                    volume = await FindAsync(domain, drive.Image, path, ct);
                }
                catch (OperationFailedException e) when (e.Code is ErrorCodes.IoError)
                {
                    unreachable = e;
                    continue;
                }
                if (volume is null) continue;
                chain.Add(new VolumeRef(domain.Id, volume.Id));
                baseVolume ??= volume;
                capacity = Math.Max(capacity, volume.Capacity);
                allocated += volume.AllocatedBytes;
                found = true;
                break;
            }
            if (!found && unreachable is not null)
                throw new OperationFailedException(ErrorCodes.IoError,
                    $"drive {drive.Image} has {path} open, which no reachable domain holds, and a domain is not reachable: {unreachable.Message}", unreachable);
        }
        return new DriveReport(drive.Image, chain.ToValueList(), capacity, allocated, baseVolume?.Format, baseVolume?.Allocation);
    }

    /// <summary>The leaves of a running VM's drives as QEMU has them open now (what a restart must open again).</summary>
    public static async Task<IReadOnlyList<DiskLeaf>> CurrentLeavesAsync(VmInfo vm, StoragePool pool, CancellationToken ct = default)
    {
        var leaves = new List<DiskLeaf>();
        foreach (var drive in vm.Drives)
        {
            var report = await DescribeDriveAsync(drive, pool, ct);
            if (report.Chain.Count == 0)
                throw new OperationFailedException(ErrorCodes.VolumeNotFound,
                    $"drive {drive.Image} of VM {vm.Id} runs on {string.Join(", ", drive.OpenChain)}, which no attached domain holds");
            // A layer no attached domain holds (its domain was not mounted when this host started, so never attached):
            // the chain's last known volume is not the leaf QEMU writes, and a record naming it would start the VM without
            // the writes on the missing layers.
            if (report.Chain.Count != drive.OpenChain.Count)
                throw new OperationFailedException(ErrorCodes.VolumeNotFound,
                    $"drive {drive.Image} of VM {vm.Id} runs on {string.Join(", ", drive.OpenChain)}, of which the attached domains hold only " +
                    $"{report.Chain.Count} layers: its leaf is not read from a partial chain");
            leaves.Add(new DiskLeaf(drive.Image, report.Chain[^1]));
        }
        return leaves;
    }

    private static async Task<VolumeInfo?> FindAsync(IStorageDomain domain, ImageId image, string path, CancellationToken ct)
    {
        try
        {
            foreach (var volume in (await domain.DescribeImageAsync(image, ct)).Volumes)
                if (domain.Locate(image, volume.Id) == path) return volume;
        }
        catch (OperationFailedException e) when (e.Code is ErrorCodes.ImageNotFound)
        {
        }
        return null;
    }
}

/// <summary>A VM's report with the key of what it was made from (see <see cref="VmReports.ListKeyedAsync"/>) and when.</summary>
public sealed record KeyedVmReport(VmReport Report, string Key, DateTimeOffset DescribedAt);
