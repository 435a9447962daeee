using System.Diagnostics;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo;

/// The host-layer demo: one host, two real file domains, a real QEMU VM whose guest keeps writing
/// while its disk moves A → B (pre-copy) and back B → A (post-copy). Every acknowledged write is
/// verified at the end. Until the cluster exists this is the whole system on one machine.
internal static class HostLayerDemo
{
    private const long MiB = 1 << 20;

    public static async Task<int> RunAsync(DemoOptions options)
    {

        var dataDir = Path.GetFullPath(options.DataDir);
        Console.WriteLine("LiveMigration.Akka demo: the host layer (two file domains, a real QEMU, a writing guest)");
        Console.WriteLine($"data directory: {dataDir} (kept afterwards)");
        await DemoSetup.ClearPreviousRunAsync(dataDir);

        var domainRoot = Path.Combine(dataDir, "domains");
        var a = await FileStorageDomain.CreateAsync(domainRoot, DomainId.New(), "domain-a", 4L << 30);
        var b = await FileStorageDomain.CreateAsync(domainRoot, DomainId.New(), "domain-b", 4L << 30);
        var pool = new StoragePool([a, b]);
        Console.WriteLine($"[1/6] storage domains: domain-a {a.Id}, domain-b {b.Id} under {domainRoot}");

        var layout = new SampleImageLayout(256 * MiB, 48 * MiB, 32 * MiB, 32 * MiB);
        var (image, volumes) = await SampleImage.CreateThreeVolumeChainAsync(a, layout);
        Console.WriteLine($"[2/6] image {image} on domain-a: raw base ({Mib(layout.BaseData)} MiB of data) → qcow2 ({Mib(layout.MiddleData)} MiB) → qcow2 leaf ({Mib(layout.LeafData)} MiB), {Mib(layout.Capacity)} MiB virtual");

        await using var hypervisor = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = Path.Combine(dataDir, "run") });
        var readyAt = new Dictionary<string, TimeSpan>();
        var clock = Stopwatch.StartNew();
        hypervisor.EventRaised += e => { if (e is BlockJobReady r) lock (readyAt) readyAt[r.JobId] = clock.Elapsed; };
        var vmId = VmId.New();
        var vm = await hypervisor.StartVmAsync(new VmSpec(vmId, "demo-vm", [await pool.ResolveChainAsync(a.Id, image)]));
        var drive = vm.Drive(image);
        Console.WriteLine($"[3/6] VM {vmId} running: qemu-system-x86_64 -M none, pid {vm.Pid}; its disk is exported over NBD at {drive.GuestSocket}");

        var exitCode = 1;
        try
        {
            var ledgerPath = Path.Combine(dataDir, "guest.ledger");
            await using var guest = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, image,
                0, 64 * MiB, ledgerPath, RateBytesPerSecond: options.GuestRate, Pattern: WritePattern.Random,
                FlushInterval: GuestWorkload.DefaultFlushInterval)); // a guest that cares: what a FLUSH covered must survive anything
            await guest.StartAsync();
            await Task.Delay(TimeSpan.FromSeconds(2));
            var warm = guest.Stats;
            Console.WriteLine($"[4/6] guest writing stamped 4 KiB blocks at {Mib(options.GuestRate)} MiB/s over the first 64 MiB: {warm.Writes} writes so far, longest write {Ms(warm.MaxLatency)}");

            var mover = new DiskMover(pool, hypervisor);
            var moves = new List<(string Title, MoveReport Report, TimeSpan Stall, double? MirrorMiBs)>();

            async Task MoveAsync(string title, MoveStrategy strategy, FileStorageDomain from, FileStorageDomain to, string switchStep)
            {
                Console.WriteLine(title);
                TimeSpan? mirrorStarted = null;
                long mirrored = 0;
                lock (readyAt) readyAt.Clear();
                var view = new ProgressView(p =>
                {
                    // The longest guest stall is taken from just before the switch to the end of the move.
                    if (p.Step == switchStep) guest.ResetLongestStall();
                    if (p.Step == "mirror" && mirrorStarted is null) mirrorStarted = clock.Elapsed;
                    if (p.Step == "mirror-ready") mirrored = p.Total;
                });
                var report = await mover.MoveAsync(vmId, image, from.Id, to.Id,
                    new MoveOptions(strategy, options.MirrorSpeed), view);
                view.EndBar();
                var stall = guest.Stats.MaxLatency;
                double? mirrorMiBs = null;
                lock (readyAt)
                    // From the mirror's start to QEMU's READY event: the mirror's own speed, not the internal copies'.
                    if (mirrorStarted is { } started && readyAt.Count == 1 && readyAt.Values.Single() > started)
                        mirrorMiBs = Mib(mirrored) / (readyAt.Values.Single() - started).TotalSeconds;
                moves.Add((title, report, stall, mirrorMiBs));
                Console.WriteLine($"    done in {Ms(report.Total)}: {(strategy == MoveStrategy.PreCopy ? "pivot" : "live snapshot")} {Ms(report.SwitchTime)}, " +
                                  $"longest guest write from the switch to the end {Ms(stall)}, {Mib(report.BytesCopied):0.0} MiB copied");
                if (mirrorMiBs is { } rate)
                    Console.WriteLine($"    mirror: {Mib(mirrored):0.0} MiB to READY at {rate:0.0} MiB/s");
                Console.WriteLine($"    the VM now runs on: {string.Join(" → ", report.FinalDrive.OpenChain.Select(Short))}");
            }

            await MoveAsync("[5/6] pre-copy domain-a → domain-b (mirror the leaf, copy the internal layers, pivot)", MoveStrategy.PreCopy, a, b, "mirror-ready");
            await MoveAsync("[6/6] post-copy domain-b → domain-a (snapshot onto A, copy the old chain, switch the backing)", MoveStrategy.PostCopy, b, a, "create-cross-domain-leaf");

            await Task.Delay(TimeSpan.FromSeconds(1));
            var stats = await guest.StopAsync();
            var finalDrive = (await hypervisor.DescribeVmAsync(vmId)).Drive(image);
            var live = await GuestVerifier.VerifyThroughNbdAsync(finalDrive.GuestSocket, finalDrive.ExportName, guest.Ledger);
            await hypervisor.StopVmAsync(vmId);
            var offline = await GuestVerifier.VerifyImageAsync(finalDrive.OpenChain[^1], VolumeFormat.Cow, WriteLedger.Load(ledgerPath));

            Console.WriteLine();
            Console.WriteLine($"guest: {stats.Writes} writes acknowledged ({Mib(stats.Bytes):0.0} MiB), {stats.DurableWrites} durable " +
                              $"({stats.Flushes} flushes, one every {GuestWorkload.DefaultFlushInterval.TotalMilliseconds:0} ms, longest {Ms(stats.MaxFlushLatency)}), " +
                              $"{stats.Errors} errors, average write {Ms(stats.AverageLatency)}");
            Console.WriteLine($"verification through NBD while running: {Verdict(live)}");
            Console.WriteLine($"verification offline from the chain on domain-a: {Verdict(offline)}");
            Console.WriteLine();
            Console.WriteLine("timings");
            foreach (var (title, report, _, _) in moves)
            {
                Console.WriteLine($"  {report.Strategy}: {Ms(report.Total)} in all");
                foreach (var (step, took) in report.Steps)
                    Console.WriteLine($"    {step,-26} {Ms(took),10}");
            }
            var convert = await DemoSetup.TimeQemuImgConvertAsync(finalDrive.OpenChain[^1], Path.Combine(dataDir, "convert-benchmark.qcow2"));
            Console.WriteLine($"for comparison, qemu-img convert of the same chain ({Mib(convert.Bytes):0.0} MiB of data): {Ms(convert.Took)}, {Mib(convert.Bytes) / convert.Took.TotalSeconds:0.0} MiB/s");

            var leftovers = (await a.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count + (await b.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count;
            Console.WriteLine($"leftovers: {leftovers} ILLEGAL volumes found; domain-b holds {(await b.ListImagesAsync()).Count} images");
            exitCode = live.Ok && offline.Ok && stats.Errors == 0 && leftovers == 0 ? 0 : 1;
            Console.WriteLine(exitCode == 0 ? "demo: OK, nothing lost" : "demo: FAILED");
        }
        finally
        {
            try { await hypervisor.StopVmAsync(vmId); } catch (OperationFailedException) { }
        }
        return exitCode;

        // "domain-b:fc199774": which domain a layer's file is on, and which volume it is.
        string Short(string path) =>
            $"{(path.StartsWith(a.DomainPath) ? "domain-a" : path.StartsWith(b.DomainPath) ? "domain-b" : "elsewhere")}:{Path.GetFileName(path)[..8]}";
        static double Mib(long bytes) => bytes / (double)MiB;
        static string Ms(TimeSpan t) => t.TotalSeconds >= 1 ? $"{t.TotalSeconds:0.00} s" : $"{t.TotalMilliseconds:0.0} ms";
        static string Verdict(VerificationReport r) =>
            r.Ok ? $"OK, {r.BlocksChecked} blocks checked ({r.DurableBlocks} durable, {r.UnacknowledgedBlocks} unacknowledged), every acknowledged write found"
                 : $"FAILED, {r.Mismatches.Count} of {r.BlocksChecked} blocks wrong ({r.Lost.Count} durable lost, {r.InDoubt.Count} in doubt), first at offset {r.Mismatches[0].Offset}";
    }
}
