using System.Diagnostics;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Tests.Contract.Real;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.HostNode.Tests.Libvirt;

/// <summary>
/// Both real adapters on the same 3-volume chain (the demo's: 256 MiB virtual, 48 + 32 + 32 MiB of data) while the
/// guest writes through the drive's NBD export: pre-copy A → B, then post-copy B → A, every acknowledged write
/// verified, nothing left over. Prints MEASURED lines (move times, pivot, longest guest write around the switch).
/// </summary>
[Collection(LibvirtCollection.Name)]
public sealed class AdapterComparisonTests(LibvirtDaemonFixture daemon, ITestOutputHelper output)
{
    private const long MiB = 1 << 20;
    private static readonly SampleImageLayout Layout = new(256 * MiB, 48 * MiB, 32 * MiB, 32 * MiB);
    private readonly LibvirtDaemonFixture _daemon = daemon;

    [Fact]
    public async Task Libvirt_moves_a_writing_guest_disk_pre_copy_and_post_copy_without_losing_a_write() =>
        await MoveBothWaysAsync("libvirt", run => new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = run, GuestNbdExport = true }));

    [Fact]
    public async Task Qmp_moves_the_same_chain_for_comparison() =>
        await MoveBothWaysAsync("qmp", run => new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = run }));

    private async Task MoveBothWaysAsync(string kind, Func<string, IHypervisor> create)
    {
        GC.KeepAlive(_daemon);
        var root = FileLayerData.NewShortRoot();
        Directory.CreateDirectory(root);
        var hypervisor = create(Path.Combine(root, "run"));
        var vmId = VmId.New();
        try
        {
            var a = await FileStorageDomain.CreateAsync(Path.Combine(root, "sd"), DomainId.New(), "domain-a", 2L << 30);
            var b = await FileStorageDomain.CreateAsync(Path.Combine(root, "sd"), DomainId.New(), "domain-b", 2L << 30);
            var pool = new StoragePool([a, b]);
            var (image, _) = await SampleImage.CreateThreeVolumeChainAsync(a, Layout);
            var started = Stopwatch.StartNew();
            var vm = await hypervisor.StartVmAsync(new VmSpec(vmId, $"{kind}-bench", [await pool.ResolveChainAsync(a.Id, image)]));
            var startTook = started.Elapsed;
            var drive = vm.Drive(image);

            await using var guest = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, image,
                0, 64 * MiB, Path.Combine(root, "guest.ledger"), RateBytesPerSecond: 2 * MiB, Pattern: WritePattern.Random));
            await guest.StartAsync();
            await Task.Delay(500);

            var mover = new DiskMover(pool, hypervisor);
            var pre = await MoveAsync(mover, guest, vmId, image, a, b, MoveStrategy.PreCopy, "mirror-ready");
            var prePivot = LastPivot(hypervisor, vmId);
            var post = await MoveAsync(mover, guest, vmId, image, b, a, MoveStrategy.PostCopy, "create-cross-domain-leaf");
            var switchCopy = hypervisor is LibvirtHypervisor l ? l.LastSwitchCopyDuration(vmId) : null;
            var postPivot = hypervisor is LibvirtHypervisor ? LastPivot(hypervisor, vmId) : null;

            var stats = await guest.StopAsync();
            var final = (await hypervisor.DescribeVmAsync(vmId)).Drive(image);
            var report = await GuestVerifier.VerifyThroughNbdAsync(final.GuestSocket, final.ExportName, guest.Ledger);
            var leftovers = (await a.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count + (await b.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count;

            output.WriteLine($"MEASURED {kind}: VM start {Ms(startTook)}");
            output.WriteLine($"MEASURED {kind}: pre-copy {Ms(pre.Report.Total)} (pivot {Ms(prePivot ?? pre.Report.SwitchTime)}), longest guest write from mirror-ready to the end {Ms(pre.Stall)}; " +
                             string.Join(", ", pre.Report.Steps.Select(s => $"{s.Step} {Ms(s.Took)}")));
            output.WriteLine($"MEASURED {kind}: post-copy {Ms(post.Report.Total)} (live snapshot {Ms(post.Report.SwitchTime)}" +
                             (switchCopy is { } c ? $", backing switch = extra copy of the active layer + pivot {Ms(c)}, of which pivot {Ms(postPivot ?? TimeSpan.Zero)}" : "") +
                             $"), longest guest write from the snapshot to the end {Ms(post.Stall)}; " +
                             string.Join(", ", post.Report.Steps.Select(s => $"{s.Step} {Ms(s.Took)}")));
            output.WriteLine($"MEASURED {kind}: guest {stats.Writes} writes, {stats.Errors} errors; {report}");

            Assert.Equal(0, stats.Errors);
            Assert.True(stats.Writes > 0, "the guest wrote nothing");
            Assert.True(report.Ok, $"acknowledged writes lost: {string.Join("; ", report.Mismatches.Take(5))}");
            Assert.Equal(0, leftovers);
            Assert.Equal((await pool.ResolveChainAsync(a.Id, image)).Layers.Select(l => l.Path), final.OpenChain);
            Assert.Empty(await b.ListImagesAsync());
            Assert.Empty(Directory.EnumerateFiles(a.DomainPath, "*.lsm-*", SearchOption.AllDirectories));
        }
        finally
        {
            try { await hypervisor.StopVmAsync(vmId); }
            catch (OperationFailedException) { /* never started */ }
            await hypervisor.DisposeAsync();
            FileLayerData.DeleteRoot(root);
        }
    }

    private static async Task<(MoveReport Report, TimeSpan Stall)> MoveAsync(DiskMover mover, GuestWorkload guest, VmId vm, ImageId image,
        FileStorageDomain from, FileStorageDomain to, MoveStrategy strategy, string switchStep)
    {
        // The longest guest write is taken from just before the switch to the end of the move.
        var progress = new Progress(p => { if (p.Step == switchStep) guest.ResetLongestStall(); });
        var report = await mover.MoveAsync(vm, image, from.Id, to.Id, new MoveOptions(strategy), progress);
        return (report, guest.Stats.MaxLatency);
    }

    private static TimeSpan? LastPivot(IHypervisor hypervisor, VmId vm) => hypervisor switch
    {
        LibvirtHypervisor l => l.LastPivotDuration(vm),
        QmpHypervisor q => q.LastPivotDuration(vm),
        _ => null,
    };

    private static string Ms(TimeSpan t) => t.TotalSeconds >= 1 ? $"{t.TotalSeconds:0.00} s" : $"{t.TotalMilliseconds:0} ms";

    /// <summary>Reports synchronously (Progress&lt;T&gt; posts later).</summary>
    private sealed class Progress(Action<MoveProgress> report) : IProgress<MoveProgress>
    {
        public void Report(MoveProgress value) => report(value);
    }
}
