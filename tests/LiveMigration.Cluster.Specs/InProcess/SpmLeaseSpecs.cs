using Akka.Actor;
using Akka.Cluster.Tools.Singleton;
using LiveMigration.HostNode.Hosting;
using LiveMigration.HostNode.Spm;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// DESIGN §7 invariant 6 and §7a, wired: the SPM cluster singleton of a host runs only while the host holds the pool's
/// lease (Akka's <c>use-lease</c> with <see cref="FileLease"/>), and an SPM whose lease another holder took (it paused,
/// the others took over) changes nothing: its steps are refused FENCED and the singleton stops.
/// </summary>
public sealed class SpmLeaseSpecs(ITestOutputHelper output)
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan Margin = TimeSpan.FromMilliseconds(300);

    [Fact]
    public async Task The_SPM_runs_only_under_the_lease_and_a_paused_one_is_refused_FENCED_once_another_holder_took_it()
    {
        var leasePath = Path.Combine(Path.GetTempPath(), $"lsm-spm-lease-{Guid.NewGuid():N}", "spm.lease");
        var bed = new ClusterBed(output)
        {
            SpmLease = new SpmLeaseSettings(leasePath, Period, Margin),
            // over the fast timings' lease block
            ExtraHocon = "lsm.spm-lease { heartbeat-timeout = 1s, heartbeat-interval = 333ms, margin = 300ms }",
        };
        try
        {
            // Another host holds the lease (and renews it) before this one starts.
            await using var other = new PoolLease(leasePath, "another-host", Period, Margin);
            Assert.True(await other.TryAcquireAsync());
            var vm = await bed.StartVmAsync("host-1", "vm-lease");
            var host = (await bed.StartHostAsync("host-1", spmCapable: true)).Node!;
            var spm = host.System.ActorOf(ClusterSingletonProxy.Props("/user/" + SpmActor.SingletonName,
                ClusterSingletonProxySettings.Create(host.System).WithRole(HostNodeHosting.SpmRole).WithSingletonName(SpmActor.SingletonName)), "spm-proxy-of-test");

            // Without the lease there is no SPM: nothing answers, for several periods.
            var waitedUntil = DateTime.UtcNow + (Period + Margin) * 3;
            while (DateTime.UtcNow < waitedUntil)
                await Assert.ThrowsAsync<AskTimeoutException>(() => spm.Ask<SpmLocation>(new GetSpmLocation(), TimeSpan.FromSeconds(1)));
            var hostLease = FileLease.MadeIn(host.System, leasePath);
            Assert.NotNull(hostLease);
            Assert.False(hostLease.IsHeld);
            Assert.Equal(("another-host", 1L), await HolderAsync(other));

            // Released: the host takes the lease with the next generation, and only then its SPM starts.
            await other.ReleaseAsync();
            await Eventually.HoldsAsync("the SPM answers once its host holds the lease", async () =>
            {
                try { return await spm.Ask<SpmLocation>(new GetSpmLocation(), TimeSpan.FromSeconds(1)) is not null; }
                catch (AskTimeoutException) { return false; }
            }, TimeSpan.FromSeconds(20));
            Assert.True(hostLease.IsHeld);
            Assert.Equal(2, hostLease.Generation);
            Assert.Equal(hostLease.Holder, (await HolderAsync(other)).Holder);

            // The host pauses (from the others' view: it stops renewing); a third holder takes the lease over.
            hostLease.StopRenewing();
            await using var successor = new PoolLease(leasePath, "successor-host", Period, Margin);
            Assert.True(await successor.TryAcquireAsync());
            Assert.Equal(3, successor.Generation);
            Assert.True(hostLease.IsHeld, "the paused SPM has not noticed yet");

            // The paused SPM wakes up with a step to run: refused FENCED before it changes anything.
            var operation = new OperationId(MigrationId.New(), MigrationStep.CloneImageStructure, vm.Image, 1);
            var step = new ExecuteStep(operation, vm.Id, new DiskPlan(vm.Image, bed.DomainA.Id, bed.DomainB.Id, ClusterBed.ChainCapacity, VolumeId.New()),
                MigrationStrategy.PreCopy, 0, CopyMode.Background);
            var reply = await spm.Ask<IHostReply>(step, TimeSpan.FromSeconds(10));
            var fenced = Assert.IsType<OperationFailed>(reply);
            Assert.Equal(ErrorCodes.Fenced, fenced.Code);
            Assert.DoesNotContain(vm.Image, await bed.DomainB.ListImagesAsync());

            // It counts the lease lost, so its singleton stops, and does not come back while the successor renews.
            Assert.False(hostLease.IsHeld);
            await Eventually.HoldsAsync("the fenced SPM's singleton stops", async () =>
            {
                try { await spm.Ask<SpmLocation>(new GetSpmLocation(), TimeSpan.FromMilliseconds(500)); return false; }
                catch (AskTimeoutException) { return true; }
            }, TimeSpan.FromSeconds(10));
            var stillWaiting = DateTime.UtcNow + (Period + Margin) * 2;
            while (DateTime.UtcNow < stillWaiting)
                await Assert.ThrowsAsync<AskTimeoutException>(() => spm.Ask<SpmLocation>(new GetSpmLocation(), TimeSpan.FromSeconds(1)));
            Assert.Equal(("successor-host", 3L), await HolderAsync(successor));

            // The successor goes away cleanly: the host takes the lease again (generation 4) and its step runs,
            // the volumes it makes carrying that generation as their owner's.
            await successor.ReleaseAsync();
            var retried = step with { Operation = operation with { Attempt = 2 } };
            var done = await RetryUntilAnsweredAsync(spm, retried, TimeSpan.FromSeconds(30));
            Assert.IsType<OperationSucceeded>(done);
            Assert.Equal(4, hostLease.Generation);
            Assert.All((await bed.DomainB.DescribeImageAsync(vm.Image)).Volumes, v => Assert.Equal(4, v.Owner!.Generation));
        }
        finally
        {
            await bed.DisposeAsync();
            Directory.Delete(Path.GetDirectoryName(leasePath)!, recursive: true);
        }
    }

    private static async Task<(string Holder, long Generation)> HolderAsync(PoolLease reader)
    {
        var record = await reader.ReadAsync();
        return (record.Holder, record.Generation);
    }

    /// <summary>Asks until the SPM answers: it is down while it re-acquires the lease, and the proxy may drop what it buffered meanwhile.</summary>
    private static async Task<IHostReply> RetryUntilAnsweredAsync(IActorRef spm, ExecuteStep step, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            try
            {
                var reply = await spm.Ask<IHostReply>(step, TimeSpan.FromSeconds(2));
                if (reply is OperationFailed { Code: ErrorCodes.Fenced } && DateTime.UtcNow < deadline) continue;
                return reply;
            }
            catch (AskTimeoutException) when (DateTime.UtcNow < deadline) { }
        }
    }
}
