using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.EndToEnd;

/// <summary>
/// One host with two real file domains (A and B), a real QEMU VM on a 3-volume chain on A, and the
/// guest workload writing through the drive's NBD export. Everything it starts is stopped by pid.
/// </summary>
public sealed class HostLayerBed : IAsyncDisposable
{
    public const long MiB = 1 << 20;
    private readonly List<QmpHypervisor> _hypervisors = [];
    private readonly List<int> _pids = [];
    private GuestWorkload? _guest;

    private HostLayerBed(string root) => Root = root;

    public string Root { get; }
    public string RunDirectory => Path.Combine(Root, "run");
    public FileStorageDomain A { get; private set; } = null!;
    public FileStorageDomain B { get; private set; } = null!;
    public StoragePool Pool { get; private set; } = null!;
    public QmpHypervisor Hypervisor { get; private set; } = null!;
    public VmId Vm { get; } = VmId.New();
    public ImageId Image { get; private set; }
    public IReadOnlyList<VolumeId> Volumes { get; private set; } = [];
    public GuestWorkload Guest => _guest ?? throw new InvalidOperationException("no guest started");
    public string LedgerPath => Path.Combine(Root, "guest.ledger");

    /// <summary>A bed with a running VM on A. B's capacity can be made small to test refusals.</summary>
    public static async Task<HostLayerBed> StartAsync(long capacityOfB = 1L << 30)
    {
        // Short root: the run directory holds unix sockets.
        var bed = new HostLayerBed(Path.Combine("/tmp", $"lsm-e2e-{Guid.NewGuid():N}"[..20]));
        Directory.CreateDirectory(bed.Root);
        bed.A = await FileStorageDomain.CreateAsync(Path.Combine(bed.Root, "sd"), DomainId.New(), "domain-a", 1L << 30);
        bed.B = await FileStorageDomain.CreateAsync(Path.Combine(bed.Root, "sd"), DomainId.New(), "domain-b", capacityOfB);
        bed.Pool = new StoragePool([bed.A, bed.B]);
        (bed.Image, bed.Volumes) = await SampleImage.CreateThreeVolumeChainAsync(bed.A, SampleImageLayout.Small);
        bed.Hypervisor = bed.NewHypervisor();
        var chain = await bed.Pool.ResolveChainAsync(bed.A.Id, bed.Image);
        var vm = await bed.Hypervisor.StartVmAsync(new VmSpec(bed.Vm, "e2e-vm", [chain]));
        if (vm.Pid is { } pid) bed._pids.Add(pid);
        return bed;
    }

    /// <summary>A hypervisor instance on this host's run directory, as a (re)started HostNode would make.</summary>
    public QmpHypervisor NewHypervisor()
    {
        var hypervisor = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = RunDirectory, CommandTimeout = TimeSpan.FromSeconds(20) });
        _hypervisors.Add(hypervisor);
        return hypervisor;
    }

    public void UseHypervisor(QmpHypervisor hypervisor) => Hypervisor = hypervisor;

    public DiskMover Mover() => new(Pool, Hypervisor);

    /// <summary>Starts the guest writing random 4 KiB blocks over the first 32 MiB of the disk.</summary>
    public async Task<GuestWorkload> StartGuestAsync(long rateBytesPerSecond, bool forceUnitAccess = false)
    {
        var drive = (await Hypervisor.DescribeVmAsync(Vm)).Drive(Image);
        _guest = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, Image, 0, 32 * MiB, LedgerPath,
            RateBytesPerSecond: rateBytesPerSecond, Pattern: WritePattern.Random, ForceUnitAccess: forceUnitAccess));
        await _guest.StartAsync();
        return _guest;
    }

    /// <summary>Waits until the guest has written at least <paramref name="count"/> more blocks, so "throughout" is true.</summary>
    public async Task WaitForGuestWritesAsync(long count)
    {
        var target = Guest.Stats.Writes + count;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Guest.Stats.Writes < target)
        {
            Assert.True(Guest.Stats.Running, $"the guest stopped writing: {Guest.Stats.LastError}");
            Assert.True(DateTime.UtcNow < deadline, "the guest did not write in 30 s");
            await Task.Delay(20);
        }
    }

    public async Task<DriveState> DriveAsync() => (await Hypervisor.DescribeVmAsync(Vm)).Drive(Image);

    /// <summary>
    /// Lets the guest write <paramref name="writesAfter"/> more blocks on <paramref name="drive"/>, stops it, and checks that
    /// it failed nothing and that every write it had acknowledged reads back through the drive's NBD export; with
    /// <paramref name="alsoOffline"/> the VM is stopped and the leaf file checked as well.
    /// </summary>
    public async Task AssertGuestLostNothingAsync(DriveState drive, int writesAfter, bool alsoOffline = false)
    {
        await WaitForGuestWritesAsync(writesAfter);
        var stats = await Guest.StopAsync();
        Assert.Equal(0, stats.Errors);
        var live = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, Guest.Ledger);
        Assert.True(live.Ok, string.Join("; ", live.Mismatches.Take(5)));
        Assert.True(live.BlocksChecked > writesAfter, $"only {live.BlocksChecked} blocks were checked");
        if (!alsoOffline) return;
        await Hypervisor.StopVmAsync(Vm);
        var offline = await GuestVerifier.VerifyImageAsync(drive.OpenChain[^1], VolumeFormat.Cow, WriteLedger.Load(LedgerPath));
        Assert.True(offline.Ok, string.Join("; ", offline.Mismatches.Take(5)));
    }

    public async Task<IReadOnlyList<string>> PathsOnAsync(FileStorageDomain domain) =>
        (await Pool.ResolveChainAsync(domain.Id, Image)).Layers.Select(l => l.Path).ToList();

    public async ValueTask DisposeAsync()
    {
        if (_guest is not null) await _guest.DisposeAsync();
        // The current instance owns the VM; earlier ones may be disposed already (a "restarted" host).
        try { await Hypervisor.StopVmAsync(Vm); } catch (OperationFailedException) { }
        foreach (var h in _hypervisors) await h.DisposeAsync();
        foreach (var pid in _pids)
        {
            try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
        }
        await FileStorageDomain.RemovalsFinishedAsync().WaitAsync(TimeSpan.FromSeconds(30)); // a delete's unlinks end before the folder goes
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}
