using System.Diagnostics;
using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Tests.MultiProcess;

/// <summary>Real processes and QEMU on 2 cores: these tests run one at a time, never beside another test class.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MultiProcessCollection
{
    public const string Name = "multi-process cluster";
}

/// <summary>
/// Issue 3 §3: a real Coordinator, two real HostNodes and a real QEMU, one of them killed with SIGKILL
/// while a throttled pre-copy mirrors the disk of a VM whose guest keeps writing.
/// </summary>
[Collection(MultiProcessCollection.Name)]
public sealed class CrashTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ToMirror = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan ToFinish = TimeSpan.FromSeconds(45);

    /// <summary>A Coordinator back on a fresh port joins while its predecessor is still a downed member: its singletons
    /// (the sagas' shard coordinator among them) start only after the removal margin, the resolver's stable-after (20 s).</summary>
    private static readonly TimeSpan RemovalMargin = TimeSpan.FromSeconds(20);

    /// <summary>
    /// The mirror runs from StartReplication to the pivot: beside the SPM's copy of the internal layers (which the
    /// migration's bandwidth limits too, so it lasts seconds here) and while the saga waits for READY.
    /// </summary>
    private static bool DuringTheMirror(MigrationSnapshot m) => m.Step is "SyncInternalVolumes" or "WaitMirrorReady";

    [Fact]
    public async Task Coordinator_killed_during_the_mirror_restarts_and_the_migration_completes()
    {
        await using var scenario = await CrashScenario.StartAsync(output);
        await scenario.StartGuestAsync();
        var id = await scenario.StartSlowPreCopyAsync();
        var beforeKill = await scenario.WaitForMigrationAsync(id, "mirror", DuringTheMirror, ToMirror);

        await scenario.Cluster.KillAsync(scenario.Coordinator);
        scenario.Log($"Coordinator killed (SIGKILL) at {beforeKill}");
        var restart = Stopwatch.StartNew();
        var coordinator = await scenario.Cluster.RestartAsync(scenario.Coordinator);
        scenario.Log($"Coordinator restarted: pid {coordinator.Pid}, same data directory and API, a fresh cluster port");
        await scenario.WaitForAsync("the restarted Coordinator's API", scenario.Api.IsUpAsync, TimeSpan.FromSeconds(30));
        var apiUp = restart.Elapsed;

        // Moving again: a later step, or more of the mirror copied than before the kill.
        var moving = await scenario.WaitForMigrationAsync(id, "move again after the restart",
            m => m.Step != beforeKill.Step || m.Done > beforeKill.Done || m.Finished, RemovalMargin + ToFinish);
        var restartToMoving = restart.Elapsed;
        scenario.Log($"restart → moving again: {restartToMoving.TotalSeconds:0.00} s ({moving})");
        output.WriteLine($"MEASURED Coordinator restart to migration moving again: {restartToMoving.TotalMilliseconds:0} ms (its API answered after {apiUp.TotalMilliseconds:0} ms)");

        await AssertCompletedAndConsistentAsync(scenario, id);
    }

    [Fact]
    public async Task HostNode_running_the_vm_killed_during_the_mirror_restarts_adopts_the_job_and_the_migration_completes()
    {
        await using var scenario = await CrashScenario.StartAsync(output);
        await scenario.StartGuestAsync();
        var id = await scenario.StartSlowPreCopyAsync();
        var beforeKill = await scenario.WaitForMigrationAsync(id, "mirror", DuringTheMirror, ToMirror);

        await scenario.Cluster.KillAsync(scenario.Host1);
        scenario.Log($"host-1 (SPM, runs the VM) killed (SIGKILL) at {beforeKill}");
        Assert.True(ProcessAlive(scenario.QemuPid), $"QEMU pid {scenario.QemuPid} died with host-1; it must outlive its HostNode");
        var restart = Stopwatch.StartNew();
        scenario.Host1 = await scenario.Cluster.RestartAsync(scenario.Host1);
        scenario.Log($"host-1 restarted: pid {scenario.Host1.Pid}");

        var moving = await scenario.WaitForMigrationAsync(id, "move again after host-1's restart",
            m => m.Step != beforeKill.Step || m.Done > beforeKill.Done || m.Finished, ToFinish);
        output.WriteLine($"MEASURED host-1 restart to migration moving again: {restart.Elapsed.TotalMilliseconds:0} ms ({moving})");

        await AssertCompletedAndConsistentAsync(scenario, id);
        Assert.True(ProcessAlive(scenario.QemuPid), $"the VM's QEMU (pid {scenario.QemuPid}) stopped during the migration");
    }

    [Fact]
    public async Task Qemu_killed_during_the_mirror_fails_the_migration_with_VM_NOT_RUNNING_and_cleans_the_destination()
    {
        await using var scenario = await CrashScenario.StartAsync(output);
        await scenario.StartGuestAsync();
        var id = await scenario.StartSlowPreCopyAsync();
        var beforeKill = await scenario.WaitForMigrationAsync(id, "mirror", DuringTheMirror, ToMirror);

        using (var qemu = Process.GetProcessById(scenario.QemuPid))
        {
            qemu.Kill();
            await qemu.WaitForExitAsync();
        }
        scenario.Log($"QEMU pid {scenario.QemuPid} killed (SIGKILL) at {beforeKill}");
        var stats = await scenario.Guest!.StopAsync();
        scenario.Log($"guest stopped: {stats.Writes} writes acknowledged, {stats.Errors} errors after its VM died");

        var final = await scenario.WaitForMigrationAsync(id, "fail", m => m.Finished, ToFinish);
        Assert.True(final.Status == "failed (VM_NOT_RUNNING)", $"migration ended {final}, expected failed (VM_NOT_RUNNING)\n{scenario.NodeLogTails()}");

        // The source chain is whole and LEGAL, as it was before the move.
        var source = await scenario.A.DescribeImageAsync(scenario.Image);
        Assert.Equal(scenario.SourceVolumes, source.Volumes.Select(v => v.Id).ToList());
        Assert.All(source.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        var chain = await scenario.Pool.ResolveChainAsync(scenario.A.Id, scenario.Image);
        Assert.Equal(3, chain.Layers.Count);
        Assert.All(chain.Layers, l => Assert.True(File.Exists(l.Path), $"source layer {l.Path} is missing"));

        // The destination is cleaned: no image of it on B, nothing ILLEGAL left anywhere.
        await scenario.WaitForAsync("the rollback to delete the destination image on B",
            async () => !(await scenario.B.ListImagesAsync()).Contains(scenario.Image), TimeSpan.FromSeconds(10));
        var leftovers = await scenario.LeftoversAsync();
        Assert.True(leftovers.Count == 0, $"ILLEGAL leftovers: {string.Join(", ", leftovers.Select(v => $"{v.Domain}/{v.Image}/{v.Id}"))}\n{scenario.NodeLogTails()}");
        Assert.Contains(scenario.Image, await scenario.A.ListImagesAsync());
    }

    /// <summary>The migration completes; the disk runs on B only; every acknowledged write reads back; nothing is left over on A or B.</summary>
    private static async Task AssertCompletedAndConsistentAsync(CrashScenario scenario, string id)
    {
        var final = await scenario.WaitForMigrationAsync(id, "complete", m => m.Finished, TimeSpan.FromSeconds(45));
        Assert.True(final.Status == "completed", $"migration ended {final}\n{scenario.NodeLogTails()}");

        var stats = await scenario.Guest!.StopAsync();
        scenario.Log($"guest: {stats.Writes} writes acknowledged, {stats.Errors} errors, longest write {stats.MaxLatency.TotalMilliseconds:0} ms");
        Assert.True(stats.Errors == 0, $"the guest saw {stats.Errors} errors");
        Assert.True(stats.Writes > 0, "the guest wrote nothing");
        var report = await GuestVerifier.VerifyThroughNbdAsync(scenario.Drive.GuestSocket, scenario.Drive.ExportName, scenario.Guest.Ledger);
        scenario.Log($"verification through NBD: {report}");
        Assert.True(report.Ok, $"acknowledged writes lost: {string.Join("; ", report.Mismatches.Take(5))}");

        var leftovers = await scenario.LeftoversAsync();
        Assert.True(leftovers.Count == 0, $"ILLEGAL leftovers: {string.Join(", ", leftovers.Select(v => $"{v.Domain}/{v.Image}/{v.Id}"))}\n{scenario.NodeLogTails()}");
        await scenario.WaitForAsync("the source image to be deleted from A",
            async () => !(await scenario.A.ListImagesAsync()).Contains(scenario.Image), TimeSpan.FromSeconds(10));
        var destination = await scenario.B.DescribeImageAsync(scenario.Image);
        Assert.Equal(3, destination.Volumes.Count);
        Assert.All(destination.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    private static bool ProcessAlive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException) { return false; }
    }
}
