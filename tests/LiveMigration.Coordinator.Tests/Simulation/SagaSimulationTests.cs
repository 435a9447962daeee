using System.Diagnostics;
using System.Text.Json;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.Coordinator.Tests.Simulation;

/// <summary>
/// The fault matrix, part 2: many seeded runs of one migration under crashes, lost/repeated/late messages, host
/// failures, a dying VM and an operator, each checked against DESIGN §7 after every event.
/// <list type="bullet">
/// <item><c>LSM_SIM_SEEDS=100000</c> runs more seeds (default 2,000), <c>LSM_SIM_FIRST_SEED</c> moves the window.</item>
/// <item><c>LSM_SIM_SEED=1234</c> replays one seed and prints its whole trace.</item>
/// <item><c>LSM_SIM_NOFENCE=1</c> runs without the HSM's switch fence (see <see cref="Simulator"/>).</item>
/// <item><c>LSM_SIM_CHAOS=noswitch|heavy|heavy-durable</c> picks another fault profile (see <see cref="Chaos.FromEnvironment"/>):
/// no faults at the switch steps, every fault more often, or that with hosts that never forget an operation id.</item>
/// </list>
/// Failures caused by a bug listed in <see cref="KnownBugs"/> are reported, not failed on; any other failure fails the
/// sweep with its seed and trace. A summary goes to <c>var/faults/simulation.json</c> under the repository root.
/// </summary>
public sealed class SagaSimulationTests(ITestOutputHelper output)
{
    /// <summary>
    /// A seed's simulator; <c>LSM_SIM_NOFENCE=1</c> takes the HSM's switch fence away (a late switch may land after its
    /// probe answered the source), so a sweep explores the saga's own defences behind it.
    /// </summary>
    private static SagaSimulator Simulator(int seed, Chaos chaos, bool trace = true)
    {
        var sim = new SagaSimulator(seed, chaos, trace: trace);
        sim.World.FencesSwitches = Environment.GetEnvironmentVariable("LSM_SIM_NOFENCE") != "1";
        return sim;
    }

    [Fact]
    public void Seeded_runs_keep_every_invariant()
    {
        if (Environment.GetEnvironmentVariable("LSM_SIM_SEED") is { Length: > 0 } one)
        {
            var result = Simulator(int.Parse(one), Chaos.FromEnvironment()).Run();
            output.WriteLine(result.Report());
            output.WriteLine(KnownBugs.Classify(result) is { } known ? $"known bug: {known.Id}" : "not a known bug");
            Assert.False(result.Failed && KnownBugs.Classify(result) is null, result.Report());
            return;
        }

        var seeds = int.TryParse(Environment.GetEnvironmentVariable("LSM_SIM_SEEDS"), out var n) ? n : 2_000;
        var first = int.TryParse(Environment.GetEnvironmentVariable("LSM_SIM_FIRST_SEED"), out var f) ? f : 1;
        var chaos = Chaos.FromEnvironment();
        var clock = Stopwatch.StartNew();
        var failures = new List<(SimResult Result, KnownBug? Known)>();
        long events = 0;
        var endings = new Dictionary<string, int>();
        var notes = new Dictionary<string, (int Count, int FirstSeed)>();
        for (var seed = first; seed < first + seeds; seed++)
        {
            var result = Simulator(seed, chaos, trace: false).Run();
            events += result.Events;
            if (result.Failed) result = Simulator(seed, chaos).Run(); // the same run again, with its trace
            var ending = result.Failed ? "violation" : result.Ending.Split(';')[0].Split(' ')[0];
            endings[ending] = endings.GetValueOrDefault(ending) + 1;
            foreach (var note in result.Notes)
                notes[note] = notes.TryGetValue(note, out var seen) ? (seen.Count + 1, seen.FirstSeed) : (1, seed);
            if (result.Failed) failures.Add((result, KnownBugs.Classify(result)));
        }
        clock.Stop();

        var unknown = failures.Where(x => x.Known is null).ToList();
        output.WriteLine($"{seeds} seeds ({first}..{first + seeds - 1}) in {clock.Elapsed.TotalSeconds:0.0} s, {events} events; endings: " +
                         string.Join(", ", endings.OrderBy(e => e.Key).Select(e => $"{e.Key} {e.Value}")));
        foreach (var group in failures.Where(x => x.Known is not null).GroupBy(x => x.Known!.Id))
            output.WriteLine($"known bug {group.Key}: {group.Count()} seeds, e.g. {string.Join(", ", group.Take(5).Select(x => x.Result.Seed))}");
        foreach (var group in unknown.GroupBy(x => x.Result.Violation!.Invariant))
            output.WriteLine($"UNKNOWN {group.Key}: {group.Count()} seeds, e.g. {string.Join(", ", group.Take(5).Select(x => x.Result.Seed))}");
        foreach (var (note, seen) in notes.OrderBy(n => n.Key))
            output.WriteLine($"note {note}: {seen.Count} seeds, first {seen.FirstSeed}");
        WriteSummary(seeds, first, clock.Elapsed, failures, notes);

        if (unknown.Count > 0)
        {
            var smallest = unknown.OrderBy(x => x.Result.Events).First().Result;
            Assert.Fail($"{unknown.Count} of {seeds} seeds broke an invariant not explained by a known bug; replay with LSM_SIM_SEED={smallest.Seed}\n{smallest.Report()}");
        }
    }

    /// <summary>
    /// A cancel, and a VM that dies, while the SPM copies the internal layers for an hour: the saga stops the copy, the
    /// SPM answers STEP_STOPPED, and the rollback ends the migration at once, the disk back on its source (the end
    /// checks of the simulator hold); also across a Coordinator crash between the stop and its answer.
    /// </summary>
    [Theory]
    [InlineData("cancel", false)]
    [InlineData("cancel", true)]
    [InlineData("vm-dies", false)]
    [InlineData("vm-dies", true)]
    public void A_copy_of_the_internal_layers_is_stopped_when_its_migration_is_undone(string cause, bool crash)
    {
        var sim = new SagaSimulator(7, Chaos.None, MigrationStrategy.PreCopy, disks: 1, parallel: 1) { CopyTakes = _ => 3_600 };
        sim.AfterEvent = (s, e) =>
        {
            if (e is not StepStarted { Step: MigrationStep.SyncInternalVolumes }) return;
            if (cause == "cancel") s.OperatorIn(5, new CancelMigration(s.Id));
            else s.KillVmIn(5);
            if (crash) s.CrashIn(5.0005); // after the stop is sent, before its answer comes back
        };
        var result = sim.Run();

        Assert.False(result.Failed, result.Report());
        if (crash) Assert.Contains(result.Trace, line => line.Contains("recovered from"));
        var failed = Assert.Single(result.Journal.OfType<StepFailed>(), f => f.Step == MigrationStep.SyncInternalVolumes);
        Assert.Equal(ErrorCodes.StepStopped, failed.Code);
        var end = result.Journal[^1];
        Assert.True(end.At - failed.At < TimeSpan.FromMinutes(1), $"ended {end.At - failed.At} after the stop:\n{result.Report()}");
        if (cause == "cancel") Assert.IsType<MigrationCancelled>(end);
        else Assert.Equal(ErrorCodes.VmNotRunning, Assert.IsType<MigrationFailed>(end).Code);
    }

    /// <summary>The late-switch cases: a post-copy abandoned or resumed, a pre-copy resumed (its rollback waits at the mirror cancel).</summary>
    public static TheoryData<MigrationStrategy, string> LateSwitchCases => new()
    {
        { MigrationStrategy.PostCopy, "abandon" },
        { MigrationStrategy.PostCopy, "resume" },
        { MigrationStrategy.PreCopy, "resume" },
    };

    /// <summary>What the operator does with a suspended rollback in the late-switch cases: "abandon" or "resume".</summary>
    private static IMigrationCommand OperatorsNext(string then, MigrationId id) =>
        then == "abandon" ? new AbandonMigration(id) : new ResumeMigration(id);

    /// <summary>
    /// B10: a late switch lands while the rollback waits suspended (at its delete; a pre-copy at its mirror cancel). Whatever the operator does next,
    /// the drive is read again first: an abandon leaves the disk on the destination leaf it now writes on, a resume rolls
    /// it forward; nothing is deleted (the simulator's end checks hold: the VM runs on what its disk was left on).
    /// </summary>
    [Theory]
    [MemberData(nameof(LateSwitchCases))]
    public void A_switch_that_lands_during_a_suspended_rollback_is_found_before_anything_is_deleted(MigrationStrategy strategy, string then)
    {
        var result = KnownBugs.LateSwitchWhileSuspended(strategy,
            id => OperatorsNext(then, id));

        Assert.False(result.Failed, result.Report());
        Assert.Contains("late-command-reexecuted", result.Notes);
        var probes = result.Journal.OfType<StepCompleted>().Where(c => c.Step == MigrationStep.ProbeSwitch).ToList();
        Assert.Equal(SwitchFinding.OnDestination, probes[^1].Outcome.Switch);
        Assert.DoesNotContain(result.Journal, e => e is StepCompleted { Step: MigrationStep.DeleteDestinationImage });
        if (then == "abandon")
        {
            Assert.Equal(DiskOutcome.Abandoned, Assert.Single(result.Journal.OfType<DiskFinished>()).Outcome);
            var left = Assert.IsType<MigrationAbandoned>(result.Journal[^1]).LeftBehind ?? [];
            Assert.Contains(left, l => l.What.Contains("reads unless the backing switch took effect"));
        }
        else
        {
            Assert.Equal(DiskOutcome.Completed, Assert.Single(result.Journal.OfType<DiskFinished>()).Outcome);
            Assert.Contains("disks moved before the failure", Assert.IsType<MigrationFailed>(result.Journal[^1]).Message);
        }
    }

    /// <summary>
    /// The same late switch at an HSM that fences what its probe answered (as DriveSteps does): the probe that saw the
    /// source wrote the fence before it answered, so the late copy is refused at the host (even after its restart), the
    /// rollback deletes the copy nobody runs on, and the VM stays on its source chain with every write.
    /// </summary>
    [Theory]
    [MemberData(nameof(LateSwitchCases))]
    public void A_late_switch_after_its_probe_answered_the_source_is_refused_by_the_hosts_fence(MigrationStrategy strategy, string then)
    {
        var result = KnownBugs.LateSwitchWhileSuspended(strategy,
            id => OperatorsNext(then, id), fences: true);

        Assert.False(result.Failed, result.Report());
        Assert.Contains(result.Trace, line => line.Contains("delivered late") && line.Contains(ErrorCodes.MigrationEnded));
        Assert.All(result.Journal.OfType<StepCompleted>().Where(c => c.Step == MigrationStep.ProbeSwitch),
            probe => Assert.Equal(SwitchFinding.OnSource, probe.Outcome.Switch));
        Assert.Contains(result.Journal, e => e is StepCompleted { Step: MigrationStep.DeleteDestinationImage });
        Assert.DoesNotContain(result.Journal, e => e is DiskFinished { Outcome: DiskOutcome.Completed });
    }

    /// <summary>
    /// B11: abandoning a disk whose switch was in doubt asks where the drive runs once more; the pivot had happened (the
    /// VM died after it), so the leaf is marked LEGAL and the disk stays on the destination, its source chain removed: the
    /// VM can start again, and nothing is left behind.
    /// </summary>
    [Fact]
    public void Abandoning_a_switch_in_doubt_probes_again_and_leaves_a_pivoted_disk_on_a_LEGAL_leaf()
    {
        var result = KnownBugs.All.Single(b => b.Id.StartsWith("B11-")).Reproduce();

        Assert.False(result.Failed, result.Report());
        var abandoned = result.Journal.SkipWhile(e => e is not AbandonStarted).ToList();
        Assert.Equal(SwitchFinding.OnDestination, abandoned.OfType<StepCompleted>().Single(c => c.Step == MigrationStep.ProbeSwitch).Outcome.Switch);
        Assert.Contains(abandoned, e => e is StepCompleted { Step: MigrationStep.MarkDestinationLeafLegal });
        Assert.Contains(abandoned, e => e is StepCompleted { Step: MigrationStep.DeleteSourceImage }); // the side it does not run on
        Assert.Equal(DiskOutcome.Abandoned, Assert.Single(result.Journal.OfType<DiskFinished>()).Outcome);
        Assert.Empty(Assert.IsType<MigrationAbandoned>(result.Journal[^1]).LeftBehind ?? []);
    }

    /// <summary>
    /// B11 with the leaf's marking failing until the abandon suspends: abandoning again is refused (the VM runs on a leaf
    /// not LEGAL yet and could not start again), the operator is told to resume, and the resume marks it and ends the abandon.
    /// </summary>
    [Fact]
    public void A_second_abandon_is_refused_while_a_pivoted_disk_waits_for_its_leaf_to_be_marked_LEGAL()
    {
        var sim = new SagaSimulator(1, Chaos.None, MigrationStrategy.PreCopy, disks: 1, parallel: 1);
        sim.Script[(MigrationStep.Pivot, 1)] = SagaSimulator.Fault.DoneThenTimeout;
        sim.Script[(MigrationStep.ProbeSwitch, 1)] = SagaSimulator.Fault.FailTransient;
        sim.Script[(MigrationStep.ProbeSwitch, 2)] = SagaSimulator.Fault.FailTransient;
        sim.Script[(MigrationStep.ProbeSwitch, 3)] = SagaSimulator.Fault.DoneThenVmDies;
        for (var attempt = 1; attempt <= 3; attempt++) sim.Script[(MigrationStep.MarkDestinationLeafLegal, attempt)] = SagaSimulator.Fault.FailTransient;
        sim.AfterEvent = (s, e) =>
        {
            if (e is MigrationSuspended { Step: MigrationStep.ProbeSwitch or MigrationStep.MarkDestinationLeafLegal }) s.OperatorIn(5, new AbandonMigration(s.Id));
        };
        sim.Start();
        var result = sim.Drain();

        Assert.False(result.Failed, result.Report());
        Assert.Contains(result.Trace, line => line.Contains("refused AbandonMigration"));
        Assert.Contains(result.Journal, e => e is MigrationResumed);
        Assert.Contains(result.Journal.SkipWhile(e => e is not MigrationResumed), e => e is StepCompleted { Step: MigrationStep.MarkDestinationLeafLegal });
        Assert.IsType<MigrationAbandoned>(result.Journal[^1]);
    }

    /// <summary>H2: the late rollback delete does reach the SPM after the roll forward, and the kept mark refuses it.</summary>
    [Fact]
    public void A_late_rollback_delete_after_a_roll_forward_reaches_the_SPM_and_is_refused()
    {
        var result = KnownBugs.All.Single(b => b.Id.StartsWith("H2-")).Reproduce();

        Assert.False(result.Failed, result.Report());
        Assert.Contains(result.Trace, line => line.Contains("Spm <- DeleteDestinationImage") && line.Contains("delivered late") && line.Contains(ErrorCodes.Conflict));
        Assert.Contains(result.Journal, e => e is DiskFinished { Outcome: DiskOutcome.Completed });
    }

    /// <summary>
    /// B12: the rollback's delete meets the copy open in QEMU (a late live snapshot landed just before it): nothing is
    /// deleted, the delete's mark is taken back, the drive is probed, found on the destination, and the disk rolls
    /// forward to completion instead of retrying the delete until it suspends under a mark that refuses the roll forward.
    /// </summary>
    [Fact]
    public void A_rollback_delete_that_finds_the_copy_in_use_probes_and_rolls_forward_when_the_switch_landed()
    {
        var result = KnownBugs.All.Single(b => b.Id.StartsWith("B12-")).Reproduce();

        Assert.False(result.Failed, result.Report());
        Assert.True(result.Journal.Any(e => e is StepFailed { Step: MigrationStep.DeleteDestinationImage, Code: ErrorCodes.VolumeInUse }), result.Report());
        Assert.Equal(SwitchFinding.OnDestination, result.Journal.OfType<StepCompleted>().Last(c => c.Step == MigrationStep.ProbeSwitch).Outcome.Switch);
        Assert.Contains(result.Journal, e => e is StepCompleted { Step: MigrationStep.CloneInternalVolumes });
        Assert.Equal(DiskOutcome.Completed, Assert.Single(result.Journal.OfType<DiskFinished>()).Outcome);
        Assert.DoesNotContain(result.Journal, e => e is MigrationSuspended);
    }

    /// <summary>Each known bug's minimal reproduction: reported while it reproduces; once fixed, set Fixed and it guards the fix.</summary>
    [Fact]
    public void Known_bugs_are_reported_and_fixed_ones_stay_fixed()
    {
        var lines = new List<string>();
        var broken = new List<string>();
        foreach (var bug in KnownBugs.All)
        {
            var result = bug.Reproduce();
            var reproduces = result.Failed && result.Violation!.Invariant == bug.Invariant;
            lines.Add($"{bug.Id} [{(bug.Fixed ? "fixed" : "open")}] {(reproduces ? "REPRODUCES" : "does not reproduce")}: {bug.Title}");
            if (bug.Fixed && result.Failed)
                broken.Add($"{bug.Id} is marked fixed but broke {result.Violation!.Invariant}:\n{result.Report()}");
            if (!bug.Fixed && !reproduces)
                lines.Add($"   {bug.Id} no longer reproduces ({(result.Failed ? result.Violation!.Invariant : "no violation")}): if the decider was fixed, mark it Fixed = true");
            if (reproduces && !bug.Fixed)
                output.WriteLine($"---- {bug.Id} ----\n{result.Report()}\n");
        }
        foreach (var line in lines) output.WriteLine(line);
        Assert.True(broken.Count == 0, string.Join("\n\n", broken));
    }

    private static void WriteSummary(int seeds, int first, TimeSpan took, List<(SimResult Result, KnownBug? Known)> failures,
        Dictionary<string, (int Count, int FirstSeed)> notes)
    {
        var root = RepoRoot();
        if (root is null) return;
        var dir = Path.Combine(root, "var", "faults");
        Directory.CreateDirectory(dir);
        var summary = new
        {
            generatedAt = DateTimeOffset.UtcNow,
            seedsRun = seeds,
            firstSeed = first,
            seconds = Math.Round(took.TotalSeconds, 2),
            failed = failures.Count,
            unknownFailures = failures.Count(x => x.Known is null),
            chaos = Environment.GetEnvironmentVariable("LSM_SIM_CHAOS") ?? "default",
            notes = notes.ToDictionary(n => n.Key, n => new { seeds = n.Value.Count, firstSeed = n.Value.FirstSeed }),
            knownBugs = KnownBugs.All.Select(b => new
            {
                id = b.Id, title = b.Title, invariant = b.Invariant, @fixed = b.Fixed, reproduction = b.Reproduction,
                seedsHit = failures.Count(x => x.Known == b),
            }),
            failures = failures.Select(x => new
            {
                seed = x.Result.Seed,
                invariant = x.Result.Violation!.Invariant,
                detail = x.Result.Violation.Detail,
                knownBug = x.Known?.Id,
                setup = x.Result.Setup,
            }),
        };
        File.WriteAllText(Path.Combine(dir, "simulation.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
    }

    private static string? RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln")))
                return dir.FullName;
        return null;
    }
}
