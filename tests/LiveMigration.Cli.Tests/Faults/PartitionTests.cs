using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Local;
using Xunit.Abstractions;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The fault matrix's network partition (issue "The fault matrix"): the VM's host runs in a network namespace of its own,
/// joined to the others by a veth link (<see cref="NamespacedLink"/>); the link is cut while the migration copies, or
/// around its switch, and stays cut past failure detection and the split brain resolver's decision (the cut-off host
/// downs itself and exits; "+brief": only past failure detection, so the host comes back as it was) while the guest
/// writes on through QEMU; then it is healed, whatever died is restarted with <c>lsm local up</c>, the migration runs
/// to its end (an operator abandons a suspension; "+cancel": the operator cancels during the cut), and DESIGN §7 is
/// checked from the outside as for every fault case.
/// The nodes listen on the link's addresses (the root side for the Coordinator and the other host); the only
/// addresses anything sends to are loopback and the link's own.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class PartitionTests : IAsyncLifetime
{
    /// <summary>Past failure detection (about 5 s) and the split brain resolver's stable-after (20 s) with a margin.</summary>
    private static readonly TimeSpan LongestCut = TimeSpan.FromSeconds(75);

    /// <summary>A brief partition: past failure detection (the host is unreachable), well short of the resolver's 20 s.</summary>
    private static readonly TimeSpan BriefCut = TimeSpan.FromSeconds(8);

    private readonly LocalClusterSession _cluster = new();
    private readonly ITestOutputHelper _output;
    private NamespacedLink? _link;

    public PartitionTests(ITestOutputHelper output) => _output = output;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        try { await _cluster.DisposeAsync(); }
        finally
        {
            if (_link is not null) await _link.DisposeAsync();
        }
    }

    /// <summary>The quick set (CI) cuts the VM's host during a pre-copy's copy; <c>LSM_FAULTS_FULL=1</c> (<c>./run.sh faults</c>) runs every case.</summary>
    public static TheoryData<string, string, string, string> Cases
    {
        get
        {
            var data = new TheoryData<string, string, string, string>();
            foreach (var (strategy, vmHost, host, when) in AllCases.Where((_, i) => FullFaultMatrixTests.FullMode || i == 0)) data.Add(strategy, vmHost, host, when);
            return data;
        }
    }

    private static readonly (string Strategy, string VmHost, string Host, string When)[] AllCases =
    [
        // strategy, the VM's host, the host cut off (host-1 is the only SPM-capable one), when
        ("pre-copy", "host-2", "host-2", "copy"),
        ("pre-copy", "host-2", "host-2", "switch"),
        ("post-copy", "host-2", "host-2", "copy"),
        ("post-copy", "host-2", "host-2", "switch"),
        ("pre-copy", "host-1", "host-1", "copy"),
        ("pre-copy", "host-2", "host-1", "copy"),
        // the operator cancels while the VM's host is cut off: the rollback must not undo the copy under its mirror
        ("pre-copy", "host-2", "host-2", "copy+cancel"),
        // unreachable, not downed: the steps sent during the cut come late or twice after the heal, to the same host
        ("pre-copy", "host-2", "host-2", "switch+brief"),
        ("post-copy", "host-2", "host-2", "switch+brief"),
    ];

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_partitioned_host_keeps_every_durable_write_and_the_vm_ends_on_one_legal_chain(string strategy, string vmHost, string host, string when)
    {
        Assert.True(Environment.UserName == "root", "the partition tests make network namespaces and veth links: run them as root");
        var clock = Stopwatch.StartNew();
        _link = await NamespacedLink.CreateAsync();
        _cluster.UpArguments =
        [
            "--node-hostname", $"coordinator={_link.RootAddress}",
            .. new[] { "host-1", "host-2" }.SelectMany(h => new[] { "--node-hostname", $"{h}={(h == host ? _link.NamespaceAddress : _link.RootAddress)}" }),
            "--node-netns", $"{host}={_link.Namespace}",
        ];
        await _cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, vmHost);
        // until the VM (or the host that runs the workload) stops, so the guest writes through the whole partition
        await _cluster.Ok("vm", "io", "vm1", "--rate", "1MiB/s");
        // Data to copy before the move starts: the move began as the guest began writing, so the leaf held almost nothing,
        // and once a 50 ms poll of the API saw no copy step at all (CI: "ended (completed) before copy"; how short those
        // steps were is not measured). 1,024 durable 4 KiB writes give the mirror (pre-copy) or the clone of the old leaf
        // (post-copy) up to 4 MiB to copy, about a second at the test's 4 MiB/s.
        await WaitForDurableWritesAsync(vmHost, 1024);
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy, "--bandwidth", "4MiB/s");
        var id = started.GetProperty("id").GetString()!;

        var state = (await LocalClusterState.ReadAsync(_cluster.DataDirectory))!;
        var hostNode = state.Nodes.Single(n => n.Name == host);
        var qemu = LocalClusterLauncher.RunningVms(state).Single(v => v.PidFile.Contains($"/{vmHost}/"));
        var cancel = when.Contains("+cancel", StringComparison.Ordinal);
        var brief = when.Contains("+brief", StringComparison.Ordinal);
        var cutAt = await WaitForMomentAsync(id, strategy, when.Split('+')[0]);
        var durableAtCut = LastDurableSequence(vmHost);
        await _link.CutAsync();
        _output.WriteLine($"{clock.Elapsed.TotalSeconds,6:0.0} s: cut {host} off at {cutAt} (durable writes up to #{durableAtCut})");
        if (cancel)
        {
            var cancelled = await _cluster.Lsm("migration", "cancel", id);
            _output.WriteLine($"{clock.Elapsed.TotalSeconds,6:0.0} s: migration cancel: {cancelled}");
            cutAt += "+cancel";
        }

        // The minority side (the cut-off host) downs itself and exits; the majority downs it. QEMU runs on, and so does the
        // guest's workload for as long as its host process lives.
        var cutFor = Stopwatch.StartNew();
        while (cutFor.Elapsed < (brief ? BriefCut : LongestCut) && (brief || hostNode.Alive)) await Task.Delay(500);
        var hostExited = !hostNode.Alive;
        var qemuRanThrough = ProcessTable.IsAlive(qemu.Pid);
        var durableAtHeal = LastDurableSequence(vmHost);
        var cutSeconds = cutFor.Elapsed.TotalSeconds;
        await _link.HealAsync();
        _output.WriteLine($"{clock.Elapsed.TotalSeconds,6:0.0} s: healed after {cutSeconds:0} s; {host} exited: {hostExited}, QEMU ran through: {qemuRanThrough}, " +
                          $"durable writes up to #{durableAtHeal}");

        var final = await FaultCheck.RunToEndAsync(_cluster, id, TimeSpan.FromMinutes(6));
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        _output.WriteLine($"{clock.Elapsed.TotalSeconds,6:0.0} s: {outcome.FinalStatus}; verify: {outcome.Verify}");
        _output.WriteLine(final.ToString());
        var point = $"{cutAt}/link-cut {host}";
        var line = outcome.ToReportLine(strategy, "qmp", "network:partition", point, clock.Elapsed);
        line["vmHost"] = vmHost;
        line["partitionSeconds"] = Math.Round(cutSeconds, 1);
        line["durableWritesDuringPartition"] = durableAtHeal - durableAtCut;
        await FaultReport.AppendAsync(line);
        if (brief) cutAt += "+brief";
        var context = $"{strategy}, VM on {vmHost}, {host} cut off at {cutAt} for {cutSeconds:0} s (host exited: {hostExited})";
        outcome.AssertClean(context, () => _cluster.LogTails(60));
        if (brief)
            Assert.False(hostExited, $"{context}: the host was downed by a partition shorter than the resolver's decision\n{_cluster.LogTails()}");
        else
            Assert.True(hostExited, $"{context}: the cut-off host still ran {LongestCut.TotalSeconds:0} s into the partition\n{_cluster.LogTails()}");
        Assert.True(qemuRanThrough, $"{context}: the VM's QEMU (pid {qemu.Pid}) did not run through the partition");
        Assert.True(durableAtHeal > durableAtCut,
            $"{context}: the guest made no write durable during the partition (last flushed sequence {durableAtCut} at the cut, {durableAtHeal} at the heal)");

        if (cancel)
        {
            foreach (var logged in LogLines("CancelReplication", "nothing to undo", "VM_NOT_FOUND")) _output.WriteLine(logged);
            // Nothing of the undone attempt may linger (a mirror job into the deleted copy, a stale record): the disk moves again.
            var again = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy);
            var secondId = again.GetProperty("id").GetString()!;
            var second = await FaultCheck.RunToEndAsync(_cluster, secondId, TimeSpan.FromMinutes(4));
            var afterwards = await FaultCheck.CheckAsync(_cluster, "vm1", second, storage);
            _output.WriteLine($"{clock.Elapsed.TotalSeconds,6:0.0} s: the move after the cancel: {afterwards.FinalStatus}; verify: {afterwards.Verify}");
            Assert.StartsWith("completed", afterwards.FinalStatus);
            afterwards.AssertClean($"{context}, then the disk moved again", () => _cluster.LogTails(60));
        }

        // The harness leaves nothing: no node, no QEMU, no namespace, no link.
        await _cluster.DisposeAsync();
        await _link.DisposeAsync();
        var (namespaceLeft, linkLeft) = await NamespacedLink.LeftoversOfAsync(_link);
        Assert.False(namespaceLeft || linkLeft, $"namespace {_link.Namespace} left: {namespaceLeft}, link {_link.RootDevice} left: {linkLeft}");
        Assert.False(hostNode.Alive || ProcessTable.IsAlive(qemu.Pid), "a node or QEMU of the test still runs");
    }

    /// <summary>
    /// Waits until the migration is where the case cuts the link, and returns that step: "copy" while data is copied with
    /// the VM on its source (pre-copy's mirror, post-copy's clone after the live snapshot), "switch" as the VM's drive is
    /// switched (pre-copy's pivot, post-copy's live snapshot). Polled through the API every 50 ms, so the cut lands close.
    /// </summary>
    private async Task<string> WaitForMomentAsync(string id, string strategy, string when)
    {
        var steps = (strategy, when) switch
        {
            // the mirror runs from StartReplication to the pivot; when the SPM's internal copies take longer than the mirror
            // needs to converge, WaitMirrorReady is over in milliseconds (CI once polled past it), so both steps count
            ("pre-copy", "copy") => new[] { "SyncInternalVolumes", "WaitMirrorReady" },
            ("pre-copy", "switch") => ["Pivot", "MarkDestinationLeafLegal"],
            ("post-copy", "copy") => ["CloneInternalVolumes"],
            ("post-copy", "switch") => ["CreateVolumeCrossDomain", "LiveSnapshotToDestination"],
            _ => throw new ArgumentException($"no moment {when} for {strategy}"),
        };
        using var http = _cluster.Http();
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        var seen = "";
        while (DateTime.UtcNow < deadline)
        {
            var migration = await http.GetFromJsonAsync<JsonElement>($"{_cluster.Api}/api/migrations/{id}");
            var disk = migration.GetProperty("disks")[0];
            seen = disk.TryGetProperty("step", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString()! : "";
            // the pivot follows a ready mirror at once: a mirror with nothing left is the pivot's moment
            var mirrorReady = seen == "WaitMirrorReady" && disk.GetProperty("total").GetInt64() > 0
                                                       && disk.GetProperty("done").GetInt64() >= disk.GetProperty("total").GetInt64();
            if (steps.Contains(seen)) return seen;
            if (when == "switch" && strategy == "pre-copy" && mirrorReady) return "WaitMirrorReady:ready";
            if (migration.GetProperty("finished").GetBoolean())
                throw new Xunit.Sdk.XunitException($"migration {id} ended ({migration.GetProperty("status")}) before {when}; last step {seen}");
            await Task.Delay(50);
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not reach {string.Join("/", steps)} in 2 minutes; last step {seen}\n{_cluster.LogTails()}");
    }

    private async Task WaitForDurableWritesAsync(string vmHost, long writes)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (LastDurableSequence(vmHost) < writes)
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"the guest made only {LastDurableSequence(vmHost)} writes durable in a minute, not {writes}\n{_cluster.LogTails()}");
            await Task.Delay(200);
        }
    }

    /// <summary>The nodes' log lines that contain any of <paramref name="words"/>, for the test's output.</summary>
    private IEnumerable<string> LogLines(params string[] words)
    {
        var logs = Path.Combine(_cluster.DataDirectory, "logs");
        if (!Directory.Exists(logs)) yield break;
        foreach (var file in Directory.EnumerateFiles(logs, "*.log").Order())
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(stream);
            while (reader.ReadLine() is { } line)
                if (words.Any(w => line.Contains(w, StringComparison.Ordinal)))
                    yield return $"{Path.GetFileNameWithoutExtension(file)}: {line}";
        }
    }

    /// <summary>The highest write sequence a completed FLUSH made durable, over the host's guest ledgers (F lines).</summary>
    private long LastDurableSequence(string host)
    {
        var guest = Path.Combine(_cluster.DataDirectory, host, "guest");
        if (!Directory.Exists(guest)) return 0;
        long last = 0;
        foreach (var ledger in Directory.EnumerateFiles(guest, "*.ledger", SearchOption.AllDirectories))
        {
            using var stream = new FileStream(ledger, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(stream);
            while (reader.ReadLine() is { } line)
                if (line.StartsWith("F ", StringComparison.Ordinal) && long.TryParse(line.AsSpan(2).Trim(), out var sequence))
                    last = Math.Max(last, sequence);
        }
        return last;
    }
}
