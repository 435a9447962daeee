using System.Diagnostics;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The fault matrix's repeated and late commands, between real processes (DESIGN §7.6/§7.7): the Coordinator sends a
/// step's command twice (<c>coordinator:duplicate@Step/before-send</c>), or keeps it and sends an old copy again once
/// the saga moved on or the migration ended (<c>coordinator:replay-late@Step/outcome-persisted|ended</c>). Some cases
/// also restart host-1 (the SPM and the VM's HSM) before the late copy arrives, so it meets a host that forgot the
/// operation id and must refuse it from durable state. Each case: every durable write kept, the VM on one LEGAL chain
/// and able to stop and start again on it (no switch left in doubt in its record), no volume left over.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class RepeatedCommandTests : IAsyncLifetime
{
    private readonly LocalClusterSession _cluster = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>The quick set (CI): a duplicated switch, and a late clone after a rollback to an SPM that forgot it;
    /// <c>LSM_FAULTS_FULL=1</c> (<c>./run.sh faults</c>) runs every case.</summary>
    public static TheoryData<string, string, string> Cases
    {
        get
        {
            var data = new TheoryData<string, string, string>();
            foreach (var c in AllCases.Where(c => FullFaultMatrixTests.FullMode || c.Plan is Quick1 or Quick2)) data.Add(c.Strategy, c.Plan, c.Step);
            return data;
        }
    }

    private const string Quick1 = "coordinator:duplicate@Pivot/before-send";
    private const string Quick2 = "host-1:kill-qemu@WaitMirrorReady/host-received;host-1:kill-self@DeleteDestinationImage/host-done;coordinator:replay-late@CloneImageStructure/ended";

    private static readonly (string Strategy, string Plan, string Step)[] AllCases =
    [
        // strategy, fault plan, the step whose command is repeated
        ("pre-copy", "coordinator:duplicate@CloneImageStructure/before-send", "CloneImageStructure"),
        ("pre-copy", "coordinator:duplicate@SyncInternalVolumes/before-send", "SyncInternalVolumes"),
        ("pre-copy", "coordinator:duplicate@Pivot/before-send", "Pivot"),
        ("pre-copy", "coordinator:duplicate@DeleteSourceImage/before-send", "DeleteSourceImage"),
        ("post-copy", "coordinator:duplicate@LiveSnapshotToDestination/before-send", "LiveSnapshotToDestination"),
        ("post-copy", "coordinator:duplicate@SwitchBackingChain/before-send", "SwitchBackingChain"),
        // an old copy while the saga is at the next steps
        ("pre-copy", "coordinator:replay-late@CloneImageStructure/outcome-persisted", "CloneImageStructure"),
        ("pre-copy", "coordinator:replay-late@Pivot/outcome-persisted", "Pivot"),
        // an old clone after a rollback (QEMU killed while the mirror runs); the SPM restarted after the delete, so
        // only the domain's durable "ended" mark can stop the clone from bringing the volumes back
        ("pre-copy", "host-1:kill-qemu@WaitMirrorReady/host-received;host-1:kill-self@DeleteDestinationImage/host-done;coordinator:replay-late@CloneImageStructure/ended", "CloneImageStructure"),
        // old copies after completion, to a host-1 that restarted after the last step and forgot every operation id
        ("pre-copy", "host-1:kill-self@DeleteSourceImage/host-done;coordinator:replay-late@Pivot/ended", "Pivot"),
        ("pre-copy", "host-1:kill-self@DeleteSourceImage/host-done;coordinator:replay-late@DeleteSourceImage/ended", "DeleteSourceImage"),
        ("post-copy", "host-1:kill-self@DeleteSourceImage/host-done;coordinator:replay-late@LiveSnapshotToDestination/ended", "LiveSnapshotToDestination"),
    ];

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_repeated_or_late_command_changes_nothing_that_was_decided(string strategy, string plan, string step)
    {
        var clock = Stopwatch.StartNew();
        _cluster.Environment = new Dictionary<string, string>
        {
            ["LSM_FAULT_PLAN"] = plan,
            ["LSM_ALLOW_FAULTS"] = "1",
        };
        await _cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(_cluster, "host-1");
        await _cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        var started = await _cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", strategy);
        var id = started.GetProperty("id").GetString()!;

        var final = await FaultCheck.RunToEndAsync(_cluster, id);
        var repeat = plan.Split(';').Single(r => r.StartsWith("coordinator:", StringComparison.Ordinal));
        var action = repeat.Split('@')[0]["coordinator:".Length..];
        var moment = repeat.Split('/')[^1];
        // The repeat really happened: the Coordinator says so; a late copy's answer is waited for before any check,
        // so a volume it brought back would be seen.
        await WaitForLogAsync(action == "duplicate" ? $"coordinator Duplicate at {step}/BeforeSend" : $"coordinator ReplayLate at {step}/{Pascal(moment)}");
        if (action == "replay-late")
        {
            var answer = await WaitForLogAsync($"the late copy of {id}/{step}:", "was answered");
            // After the rollback the SPM that gets the old clone restarted and forgot the operation id: only the
            // destination's durable mark can refuse it.
            if (plan.Contains("kill-qemu", StringComparison.Ordinal))
                Assert.Contains("MIGRATION_ENDED", answer);
        }

        // No switch left in doubt in the host's record: the VM stops and starts again on its chain.
        if ((await _cluster.Json("vm", "show", "vm1")).GetProperty("running").GetBoolean())
        {
            await _cluster.Ok("vm", "stop", "vm1");
            await _cluster.Ok("vm", "start", "vm1");
        }
        var outcome = await FaultCheck.CheckAsync(_cluster, "vm1", final, storage);
        await FaultReport.AppendAsync(outcome.ToReportLine(strategy, "qmp", $"coordinator:{action}", plan, clock.Elapsed));
        outcome.AssertClean(plan, () => _cluster.LogTails());
        if (!plan.Contains("kill-qemu", StringComparison.Ordinal))
            Assert.True(outcome.FinalStatus.StartsWith("completed", StringComparison.Ordinal), $"{plan}: ended {outcome.FinalStatus}\n{_cluster.LogTails()}");
    }

    private static string Pascal(string moment) =>
        string.Concat(moment.Split('-').Select(w => char.ToUpperInvariant(w[0]) + w[1..]));

    /// <summary>Waits until a node's log (under DATA/logs) has a line containing each of <paramref name="texts"/>; returns it.</summary>
    private async Task<string> WaitForLogAsync(params string[] texts)
    {
        var text = string.Join(" … ", texts);
        var logs = Path.Combine(_cluster.DataDirectory, "logs");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (DateTime.UtcNow < deadline)
        {
            if (Directory.Exists(logs) && Directory.EnumerateFiles(logs).Select(f => LineOf(f, texts)).FirstOrDefault(l => l is not null) is { } line)
                return line;
            await Task.Delay(500);
        }
        throw new Xunit.Sdk.XunitException($"no node logged '{text}' within 90 s\n{_cluster.LogTails()}");
    }

    private static string? LineOf(string file, string[] texts)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        while (reader.ReadLine() is { } line)
            if (texts.All(t => line.Contains(t, StringComparison.Ordinal))) return line;
        return null;
    }
}
