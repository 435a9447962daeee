using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Sim;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>
/// The HSM pushes a running mirror's progress about once a second while the saga waits for READY (no re-sent
/// wait needed), and a speed change reaches the running mirror; over the sim hypervisor, whose mirror copies at
/// the job's speed; a background mirror the guest outruns is started again write-blocking and READY follows; a mirror
/// that stops copying altogether fails its wait with its numbers instead of waiting for ever.
/// </summary>
public sealed class HsmMirrorProgressTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimHost _host = new("progress-host");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30);
    private readonly StoragePool _pool;
    private SimHypervisor _hypervisor = null!;
    private SeededChain _chain = null!;
    private VmInfo _vm = null!;

    public HsmMirrorProgressTests() => _pool = new StoragePool([_a, _b]);

    public async Task InitializeAsync()
    {
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _a.SeedAllocated(_chain.Image, _chain.Leaf, 8 * MiB);
        _hypervisor = new SimHypervisor(_host, _pool);
        _vm = await _hypervisor.StartVmAsync(new VmSpec(VmId.New(), "progress-vm", [await _pool.ResolveChainAsync(_a.Id, _chain.Image)]));
    }

    public async Task DisposeAsync()
    {
        await _hypervisor.DisposeAsync();
        await _host.DisposeAsync();
    }

    [Fact]
    public async Task While_waiting_for_ready_the_hsm_pushes_growing_progress_every_second_and_then_stops()
    {
        var spm = Sys.ActorOf(Spm.SpmActor.Props(_pool));
        var hsm = Sys.ActorOf(HsmActor.Props(_hypervisor, _pool));
        var saga = CreateTestProbe();
        // 8 MiB at 2 MiB/s: READY after about four seconds.
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, speed: 2 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);

        var progress = new List<OperationProgress>();
        await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga, progress: progress);

        var moving = progress.Select(p => p.Done).Distinct().ToList();
        Assert.True(moving.Count >= 3, $"expected the progress to move at least three times, got {string.Join(", ", progress.Select(p => $"{p.Done}/{p.Total}"))}");
        Assert.Equal(moving.Order(), moving);
        Assert.All(progress, p => Assert.True(p.Total > 0 && p.Done <= p.Total));
        // READY ended the wait: no more reads are pushed.
        await StepDriver.ExpectNoAnswerAsync(saga, TimeSpan.FromMilliseconds(1500));
        Assert.False(saga.HasMessages);
    }

    [Fact]
    public async Task A_speed_change_reaches_the_running_mirror()
    {
        var spm = Sys.ActorOf(Spm.SpmActor.Props(_pool));
        var hsm = Sys.ActorOf(HsmActor.Props(_hypervisor, _pool));
        var saga = CreateTestProbe();
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, speed: 1 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        Assert.Equal(1 * MiB, (await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond);

        hsm.Tell(new SetStepSpeed(driver.Op(Step.SyncInternalVolumes), 64 * MiB), saga.Ref);

        await AwaitAssertAsync(async () =>
            Assert.Equal(64 * MiB, (await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond), TimeSpan.FromSeconds(5));
        saga.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // no answer under the step's operation id
    }

    [Fact]
    public async Task The_wait_for_ready_gives_the_mirror_the_speed_it_carries()
    {
        // the saga halves a pre-copy's limit between the mirror and the SPM's copy, and gives the mirror all of it at the wait
        var spm = Sys.ActorOf(Spm.SpmActor.Props(_pool));
        var hsm = Sys.ActorOf(HsmActor.Props(_hypervisor, _pool));
        var saga = CreateTestProbe();
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, speed: 1 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        Assert.Equal(1 * MiB, (await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond);

        hsm.Tell(driver.Command(Step.WaitMirrorReady) with { SpeedBytesPerSecond = 2 * MiB }, saga.Ref);

        await AwaitAssertAsync(async () =>
            Assert.Equal(2 * MiB, (await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond), TimeSpan.FromSeconds(5));
        Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(saga, driver.Op(Step.WaitMirrorReady), timeout: TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task A_background_mirror_the_guest_outruns_is_started_again_write_blocking_and_the_outcome_says_why()
    {
        // The guest dirties 6 MiB/s, the mirror may copy 4 MiB/s: in background mode it would never be READY.
        await using var busy = new SimHypervisor(_host, _pool, new SimHypervisorOptions { GuestDirtyBytesPerSecond = 6 * MiB });
        var spm = Sys.ActorOf(Spm.SpmActor.Props(_pool));
        var hsm = Sys.ActorOf(HsmActor.Props(busy, _pool, convergenceWindow: TimeSpan.FromSeconds(2)));
        var saga = CreateTestProbe();
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy,
            speed: 4 * MiB, mode: CopyMode.Background);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);

        var ready = await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga, timeout: TimeSpan.FromSeconds(30));

        var job = await busy.GetBlockJobAsync(_vm.Id, _chain.Image);
        Assert.Equal(BlockJobPhase.Ready, job!.Phase);
        Assert.Equal(CopyMode.WriteBlocking, job.Mode);
        Assert.Equal(4 * MiB, job.SpeedBytesPerSecond);
        Assert.NotNull(ready.Outcome.Note);
        Assert.Contains("did not converge", ready.Outcome.Note);
        Assert.Contains("write-blocking", ready.Outcome.Note);
        // and it pivots as any READY mirror does
        await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga);
        var pivot = await driver.SucceedAsync(hsm, Step.Pivot, saga);
        Assert.Contains("runs on domain", pivot.Outcome.Detail);
    }

    [Fact]
    public async Task A_mirror_that_stops_copying_fails_its_wait_not_converging_with_its_numbers_and_leaves_the_drive_on_its_source()
    {
        // The mirror stops half-way (its destination stopped answering): nothing left shrinks any more.
        var stall = _hypervisor.Faults.StallNext(nameof(IHypervisor.StartMirrorAsync), atFraction: 0.5);
        var spm = Sys.ActorOf(Spm.SpmActor.Props(_pool));
        var hsm = Sys.ActorOf(HsmActor.Props(_hypervisor, _pool, stallWindow: TimeSpan.FromSeconds(3)));
        var saga = CreateTestProbe();
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, speed: 8 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        try
        {
            hsm.Tell(driver.Command(Step.WaitMirrorReady), saga.Ref);
            var answer = await StepDriver.AnswerAsync(saga, driver.Op(Step.WaitMirrorReady), timeout: TimeSpan.FromSeconds(30));

            var failed = Assert.IsType<OperationFailed>(answer);
            Assert.Equal(ErrorCodes.MirrorNotConverging, failed.Code);
            Assert.False(failed.Transient); // waiting again would watch the same job: the saga rolls back
            Assert.Contains("cannot converge", failed.Message);
            Assert.Contains("never went below 4.0 MiB", failed.Message);
            Assert.Contains("speed limit 8.0 MiB/s", failed.Message);
            // the wait ended, the mirror did not: the rollback's CancelReplication ends it, the drive still on its source
            Assert.Equal(BlockJobPhase.Running, (await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.Phase);
            await driver.SucceedAsync(hsm, Step.CancelReplication, saga);
            Assert.Null(await _hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image));
        }
        finally
        {
            stall.Release();
        }
    }
}
