using System.Diagnostics;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Demo.Cluster;
using LiveMigration.Shared.Migration;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>One crash case of the matrix: where the VM runs, which process does what, and at which point.</summary>
/// <param name="VmHost">host-1 (the only spm-role node of a local cluster, so the SPM runs there) or host-2 (the SPM on the other host).</param>
public sealed record CrashCase(string Adapter, string Strategy, string VmHost, string Process, string Action, MigrationStep Step, string Moment)
{
    public string Plan => $"{Process}:{Action}@{Step}/{Moment}";
    public string Point => $"{Step}/{Moment}";
    public string Fault => $"{Process}:{Action}" + (VmHost == "host-1" ? "" : $" (vm on {VmHost})");


    /// <summary>
    /// One case, as an operator meets it: a cluster with the crash plan, a writing guest on <see cref="CrashCase.VmHost"/>,
    /// the migration followed to its end (restarting what died, abandoning a suspension), §7 checked, the line reported.
    /// </summary>
    public static async Task RunAsync(LocalClusterSession cluster, CrashCase crash)
    {
        var clock = Stopwatch.StartNew();
        cluster.Environment = new Dictionary<string, string>
        {
            ["LSM_FAULT_PLAN"] = crash.Plan,
            ["LSM_ALLOW_FAULTS"] = "1",
        };
        if (crash.Adapter == "libvirt") cluster.UpArguments = ["--hypervisor", "libvirt", "--libvirt-guest-export"]; // the stand-in guest writes over NBD
        await cluster.UpAsync();
        var storage = await FaultCheck.CreateDomainsAndVmAsync(cluster, crash.VmHost);
        await cluster.Ok("vm", "io", "vm1", "--rate", "4MiB/s", "--seconds", "4");
        var started = await cluster.Json("migrate", "vm1", "--to", "sdB", "--strategy", crash.Strategy);
        var id = started.GetProperty("id").GetString()!;

        try
        {
            var final = await FaultCheck.RunToEndAsync(cluster, id);
            var outcome = await FaultCheck.CheckAsync(cluster, "vm1", final, storage);
            await FaultReport.AppendAsync(outcome.ToReportLine(crash.Strategy, crash.Adapter, crash.Fault, crash.Point, clock.Elapsed));
            outcome.AssertClean($"{crash.Adapter} {crash.Strategy} vm on {crash.VmHost}: {crash.Plan}", () => cluster.LogTails());
        }
        catch
        {
            KeepForInspection(cluster, crash);
            throw;
        }
    }

    /// <summary>A failed case's logs and domains go to <c>var/faults/failed/</c> (the session removes its data directory).</summary>
    private static void KeepForInspection(LocalClusterSession cluster, CrashCase crash)
    {
        var target = Path.Combine(FaultReport.Folder, "failed", $"{crash.Adapter}-{crash.Strategy}-{crash.VmHost}-{crash.Plan}".Replace(':', '-').Replace('@', '-').Replace('/', '-'));
        foreach (var folder in new[] { "logs", "storage" })
        {
            var from = Path.Combine(cluster.DataDirectory, folder);
            if (!Directory.Exists(from)) continue;
            foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            {
                var to = Path.Combine(target, folder, Path.GetRelativePath(from, file));
                Directory.CreateDirectory(Path.GetDirectoryName(to)!);
                if (new FileInfo(file).Length < 64 << 20) File.Copy(file, to, overwrite: true);
            }
        }
    }
}

/// <summary>
/// The whole crash matrix (issue "The fault matrix"), generated from the strategies' forward steps
/// (<see cref="MigrationPlan.ForwardSteps"/>) × the fault plan's moments × the faults: the Coordinator killed, the VM's
/// host killed, the SPM's host killed (on the VM's host and on the other one), QEMU killed; and, for the libvirt adapter,
/// the same faults at its switch steps. Every case must end clean (<see cref="FaultOutcome.AssertClean"/>).
/// Runs only with <c>LSM_FAULTS_FULL=1</c> (<c>./run.sh faults</c> without <c>--quick</c>): 109 cases of 17–35 s on
/// a quiet machine; otherwise only the libvirt backing-switch case that once lost writes.
/// </summary>
[Collection(LocalClusters.Name)]
public sealed class FullFaultMatrixTests : IAsyncLifetime
{
    public const string FullVariable = "LSM_FAULTS_FULL";
    public static bool FullMode => Environment.GetEnvironmentVariable(FullVariable) == "1";

    private static readonly string[] CoordinatorMoments = ["before-send", "outcome-received", "outcome-persisted"];
    private static readonly string[] HostMoments = ["host-received", "host-done"];
    private const string SpmHost = "host-1";

    private readonly LocalClusterSession _cluster = new();
    private LibvirtDaemon? _libvirt;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        if (_libvirt is not null) await _libvirt.DisposeAsync();
    }

    /// <summary>Every case, generated; the prunes say why a combination does not exist or is another case's twin.</summary>
    public static IEnumerable<CrashCase> AllCases()
    {
        foreach (var strategy in new[] { MigrationStrategy.PreCopy, MigrationStrategy.PostCopy })
        foreach (var step in MigrationPlan.ForwardSteps(strategy, deleteSource: true))
        {
            var name = strategy == MigrationStrategy.PreCopy ? "pre-copy" : "post-copy";
            var hsm = MigrationPlan.RoleOf(step) == HostRole.Hsm;
            // The Coordinator reaches only its own moments (host-received/host-done happen on a host). Where the VM
            // runs does not change what the Coordinator does, so one topology.
            foreach (var moment in CoordinatorMoments)
                yield return new CrashCase("qmp", name, "host-1", "coordinator", "kill-self", step, moment);

            foreach (var moment in HostMoments.Where(m => Reached(step, m)))
            {
                // SPM on the VM's host: host-1 runs every step, HSM and SPM alike.
                yield return new CrashCase("qmp", name, "host-1", "host-1", "kill-self", step, moment);
                // SPM on the other host (VM on host-2): an HSM step dies with the VM's host, an SPM step with the SPM's.
                // The host that does not run the step never reaches the point: no such case.
                yield return new CrashCase("qmp", name, "host-2", hsm ? "host-2" : SpmHost, "kill-self", step, moment);
                // QEMU is killed by the host that runs its VM, which is the one that runs HSM steps; at an SPM step no
                // process holds the VM to kill (QEMU dying during an SPM step is seen by the next HSM step: the
                // kill-qemu cases at that step's host-received). Where the SPM runs does not change an HSM step.
                if (hsm) yield return new CrashCase("qmp", name, "host-1", "host-1", "kill-qemu", step, moment);
            }
        }

        // libvirt: the crash points around its switch steps (the pivot, the live snapshot, the backing switch), where
        // the adapter's own code decides; the copy steps are the SPM's and the same for both adapters. The Coordinator's
        // outcome-persisted point is left out: the adapter has answered and the journal holds it, as in the qmp cases.
        foreach (var (strategy, step) in new[]
                 {
                     ("pre-copy", MigrationStep.Pivot), ("post-copy", MigrationStep.LiveSnapshotToDestination),
                     ("post-copy", MigrationStep.SwitchBackingChain),
                 })
        {
            yield return new CrashCase("libvirt", strategy, "host-1", "coordinator", "kill-self", step, "before-send");
            yield return new CrashCase("libvirt", strategy, "host-1", "coordinator", "kill-self", step, "outcome-received");
            foreach (var moment in HostMoments)
            {
                yield return new CrashCase("libvirt", strategy, "host-1", "host-1", "kill-self", step, moment);
                yield return new CrashCase("libvirt", strategy, "host-1", "host-1", "kill-qemu", step, moment);
            }
        }
    }

    /// <summary>WaitMirrorReady is a wait, not a piece of work: its host answers when QEMU's job says READY, so it has
    /// a host-received point (the wait begins) and no host-done point.</summary>
    private static bool Reached(MigrationStep step, string moment) => !(step == MigrationStep.WaitMirrorReady && moment == "host-done");

    private static readonly CrashCase QuickLibvirtCase =
        new("libvirt", "post-copy", "host-1", "host-1", "kill-qemu", MigrationStep.SwitchBackingChain, "host-received");

    public static TheoryData<string, string, string, string, string, string, string> Cases
    {
        get
        {
            var data = new TheoryData<string, string, string, string, string, string, string>();
            if (!FullMode)
            {
                // The quick set keeps the libvirt case that lost durable writes before its backing switch put the
                // layer QEMU wrote back after QEMU died (FaultMatrixTests holds the QMP quick cases).
                var quick = QuickLibvirtCase;
                data.Add(quick.Adapter, quick.Strategy, quick.VmHost, quick.Process, quick.Action, quick.Step.ToString(), quick.Moment);
                return data;
            }
            foreach (var c in AllCases()) data.Add(c.Adapter, c.Strategy, c.VmHost, c.Process, c.Action, c.Step.ToString(), c.Moment);
            return data;
        }
    }

    [Fact]
    public void The_generated_matrix_holds_every_fault_kind_at_every_forward_step()
    {
        var cases = AllCases().ToList();
        Assert.Equal(cases.Count, cases.Select(c => (c.Adapter, c.VmHost, c.Plan, c.Strategy)).Distinct().Count());
        foreach (var strategy in new[] { MigrationStrategy.PreCopy, MigrationStrategy.PostCopy })
        foreach (var step in MigrationPlan.ForwardSteps(strategy, deleteSource: true))
        {
            var at = cases.Where(c => c.Adapter == "qmp" && c.Step == step).ToList();
            Assert.Contains(at, c => c.Process == "coordinator");
            Assert.Contains(at, c => c.Process == "host-1" && c.Action == "kill-self" && c.VmHost == "host-1");
            Assert.Contains(at, c => c.VmHost == "host-2" && c.Action == "kill-self");
            if (MigrationPlan.RoleOf(step) == HostRole.Hsm) Assert.Contains(at, c => c.Action == "kill-qemu");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_crash_at_any_step_and_moment_keeps_every_durable_write_and_leaves_one_legal_chain(
        string adapter, string strategy, string vmHost, string process, string action, string step, string moment)
    {
        var crash = new CrashCase(adapter, strategy, vmHost, process, action, Enum.Parse<MigrationStep>(step), moment);
        if (adapter == "libvirt") _libvirt = await LibvirtDaemon.EnsureRunningAsync();
        await CrashCase.RunAsync(_cluster, crash);
    }
}
