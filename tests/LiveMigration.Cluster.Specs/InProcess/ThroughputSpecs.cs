using System.Diagnostics;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// How many sim migrations one Coordinator with the SQLite journal completes per second: a figure for
/// the notes, printed rather than asserted. The sim copies and mirrors take no time, so what is measured
/// is the saga, its journal writes and the messages to the hosts.
/// </summary>
public sealed class ThroughputSpecs(ITestOutputHelper output)
{
    private const int VmCount = 50;
    private const int StartsInFlight = 5;

    [Fact]
    public async Task One_coordinator_completes_fifty_sim_migrations_and_reports_how_many_per_second()
    {
        // Limits high enough that admission does not queue: the journal and the saga are the bottleneck.
        await using var bed = new ClusterBed(output)
        {
            Limits = new MigrationLimits(PerHost: VmCount, PerDomain: VmCount),
            // A burst of 50 starts queues the shards' remember-entities writes behind the sagas' on the one SQLite
            // writer: the fast test timings' 1 s would time them out; these are Akka's defaults.
            ExtraHocon = "akka.cluster.sharding { updating-state-timeout = 5s, waiting-for-state-timeout = 5s }",
        };
        var coordinator = await bed.StartCoordinatorAsync("coordinator-1");
        await bed.StartHostAsync("host-2", spmCapable: true);
        var vms = new List<SimVm>();
        for (var i = 0; i < VmCount; i++) vms.Add(await bed.StartVmAsync("host-1", $"vm-{i:D2}"));
        var host1 = await bed.StartHostAsync("host-1", spmCapable: false);
        await bed.AwaitAllUpAsync();
        await bed.AwaitInventoryAsync(coordinator, vms.Select(v => v.Id).ToList(), TimeSpan.FromSeconds(30));

        var clock = Stopwatch.StartNew();
        // At most a few start requests in flight, as API clients would send them: a burst of 50 asks at once
        // waits more than the API's 15 s ask timeout behind the one SQLite writer.
        using var inFlight = new SemaphoreSlim(StartsInFlight);
        var ids = await Task.WhenAll(vms.Select(async vm =>
        {
            await inFlight.WaitAsync();
            try { return await bed.StartMigrationAsync(coordinator, ClusterBed.MoveToB(vm, bed.DomainB.Id, MigrationStrategy.PreCopy)); }
            finally { inFlight.Release(); }
        }));
        var accepted = clock.Elapsed;
        var states = await Task.WhenAll(ids.Select(id => bed.AwaitFinishedAsync(coordinator, id, TimeSpan.FromSeconds(90))));
        var finished = clock.Elapsed;

        Assert.All(states, s => Assert.Equal("completed", s.Status));
        foreach (var vm in vms) await bed.AssertRunsOnAsync(host1, vm, bed.DomainB, bed.DomainA);
        var events = states.Sum(s => s.Disks.Sum(d => d.Timings.Count));
        output.WriteLine($"THROUGHPUT: {VmCount} pre-copy sim migrations (1 disk, 3-volume chain each) on one Coordinator with the SQLite journal: " +
            $"{StartsInFlight} start requests in flight, all accepted in {accepted.TotalSeconds:F2} s, all completed in {finished.TotalSeconds:F2} s = " +
            $"{VmCount / finished.TotalSeconds:F1} migrations/s ({events} steps)");
    }
}
