using Akka.Actor;
using Akka.TestKit;
using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Steps;
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
/// The SPM and HSM actors driven step by step with ExecuteStep, as the saga drives them, over the sim
/// adapters: a running VM on a 3-volume chain on domain A moves to domain B.
/// </summary>
public sealed class HostActorsSimTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimHost _host = new("actor-host");
    // copies report every 64 KiB, so a throttled copy reports many times a second (options of their own: they hold the faults)
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30, new SimStorageOptions { ProgressStepBytes = 64 << 10 });
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30, new SimStorageOptions { ProgressStepBytes = 64 << 10 });
    private readonly StoragePool _pool;
    private readonly List<SimHypervisor> _hypervisors = [];
    private SeededChain _chain = null!;
    private VmInfo _vm = null!;

    public HostActorsSimTests() => _pool = new StoragePool([_a, _b]);

    public async Task InitializeAsync()
    {
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _a.SeedAllocated(_chain.Image, _chain.Leaf, 8 * MiB);
        var drive = await _pool.ResolveChainAsync(_a.Id, _chain.Image);
        _vm = await NewHypervisor().StartVmAsync(new VmSpec(VmId.New(), "actor-vm", [drive]));
    }

    public async Task DisposeAsync()
    {
        foreach (var h in _hypervisors) await h.DisposeAsync();
        await _host.DisposeAsync();
    }

    private SimHypervisor NewHypervisor(SimHypervisorOptions? options = null)
    {
        var h = new SimHypervisor(_host, _pool, options);
        _hypervisors.Add(h);
        return h;
    }

    private StepDriver Driver(MigrationStrategy strategy, long speed = 0) =>
        new(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), strategy, speed);

    private IActorRef Spm() => Sys.ActorOf(SpmActor.Props(_pool));
    private IActorRef Hsm(IHypervisor hypervisor) => Sys.ActorOf(HsmActor.Props(hypervisor, _pool));

    private async Task<DriveState> DriveAsync(IHypervisor hypervisor) => (await hypervisor.DescribeVmAsync(_vm.Id)).Drive(_chain.Image);

    [Fact]
    public async Task A_copy_reporting_many_times_a_second_reaches_the_saga_at_most_once_a_second_and_its_last_figure_is_the_whole()
    {
        var (spm, hsm, saga) = (Spm(), Hsm(_hypervisors[0]), CreateTestProbe());
        // two 1 MiB layers at 1 MiB/s in 64 KiB chunks: 32 reports over about 2 s
        var driver = Driver(MigrationStrategy.PreCopy, speed: 1 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);

        var progress = new List<OperationProgress>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        driver.Send(spm, Step.SyncInternalVolumes, saga);
        OperationSucceeded? done = null;
        while (done is null)
        {
            switch (await saga.ReceiveOneAsync(TimeSpan.FromSeconds(20)))
            {
                case OperationProgress p: progress.Add(p); break;
                case OperationSucceeded s: done = s; break;
                case var other: throw new Xunit.Sdk.XunitException($"unexpected {other}");
            }
        }

        // one at the start, one a second while it runs, the last as it ends (not one per 64 KiB: 32), never going back
        var figures = string.Join(", ", progress.Select(p => $"{p.Done}/{p.Total}"));
        Assert.True(progress.Count >= 2 && progress.Count <= Math.Ceiling(clock.Elapsed.TotalSeconds) + 2,
            $"{progress.Count} reports in {clock.Elapsed.TotalSeconds:0.0} s: {figures}");
        Assert.True(progress.Zip(progress.Skip(1)).All(pair => pair.Second.Done >= pair.First.Done), figures);
        Assert.Equal(done.Outcome.BytesCopied, progress[^1].Done);
    }

    [Fact]
    public async Task Copies_beyond_the_SPMs_bound_wait_their_turn_running_and_say_how_long_they_waited()
    {
        var spm = Sys.ActorOf(SpmActor.Props(_pool, maxConcurrentCopies: 1));
        var (first, second) = (CreateTestProbe(), CreateTestProbe());
        var one = Driver(MigrationStrategy.PreCopy);
        var otherChain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        var two = new StepDriver(VmId.New(), new DiskPlan(otherChain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, 0);
        await one.SucceedAsync(spm, Step.CloneImageStructure, first);
        await two.SucceedAsync(spm, Step.CloneImageStructure, second);

        var stall = _b.Faults.StallNext(nameof(SimStorageDomain.CopyVolumeDataAsync), atFraction: 0.5);
        one.Send(spm, Step.SyncInternalVolumes, first);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        two.Send(spm, Step.SyncInternalVolumes, second);
        // The second runs (its size told, a repeat attaches) but copies nothing while the first holds the only slot.
        var waiting = Assert.IsType<OperationProgress>(await second.ReceiveOneAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(0, waiting.Done);
        Assert.True(waiting.Total > 0);
        await second.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(500));
        two.Send(spm, Step.SyncInternalVolumes, second);
        Assert.Equal(0, Assert.IsType<OperationProgress>(await second.ReceiveOneAsync(TimeSpan.FromSeconds(5))).Done);
        // While it waits it says so again within the saga's step deadline, so the saga does not send it again.
        var still = Assert.IsType<OperationProgress>(await second.ReceiveOneAsync(StorageSteps.StillWaitingInterval + TimeSpan.FromSeconds(5)));
        Assert.Equal((0L, waiting.Total), (still.Done, still.Total));

        stall.Release();
        Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(first, one.Op(Step.SyncInternalVolumes)));
        var done = Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(second, two.Op(Step.SyncInternalVolumes)));
        Assert.Equal(waiting.Total, done.Outcome.BytesCopied);
        Assert.Contains("for a copy slot", done.Outcome.Detail);
    }

    [Fact]
    public async Task A_post_copy_never_waits_for_a_copy_slot_the_guest_writing_on_its_new_leaf_meanwhile()
    {
        var spm = Sys.ActorOf(SpmActor.Props(_pool, maxConcurrentCopies: 1));
        var (holder, saga) = (CreateTestProbe(), CreateTestProbe());
        var otherChain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        var preCopy = new StepDriver(VmId.New(), new DiskPlan(otherChain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy, 0);
        await preCopy.SucceedAsync(spm, Step.CloneImageStructure, holder);
        var stall = _b.Faults.StallNext(nameof(SimStorageDomain.CopyVolumeDataAsync), atFraction: 0.5);
        preCopy.Send(spm, Step.SyncInternalVolumes, holder);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10)); // the only slot is taken

        var postCopy = Driver(MigrationStrategy.PostCopy);
        await postCopy.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        await postCopy.SucceedAsync(Hsm(_hypervisors[0]), Step.LiveSnapshotToDestination, saga);
        var cloned = await postCopy.SucceedAsync(spm, Step.CloneInternalVolumes, saga);
        Assert.DoesNotContain("copy slot", cloned.Outcome.Detail);

        stall.Release();
        Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(holder, preCopy.Op(Step.SyncInternalVolumes)));
    }

    [Fact]
    public async Task A_saga_attaching_to_a_running_copy_hears_at_once_where_it_stands()
    {
        var (spm, hsm, saga) = (Spm(), Hsm(_hypervisors[0]), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        var stall = _b.Faults.StallNext(nameof(SimStorageDomain.CopyVolumeDataAsync), atFraction: 0.5);
        driver.Send(spm, Step.SyncInternalVolumes, saga);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        // past the SPM's once-a-second telling: what the copy reported before it stalled has gone to the first saga
        await Task.Delay(HsmActor.ProgressInterval + TimeSpan.FromMilliseconds(500));

        // the saga recovered on another Coordinator sends the step again: the copy is stalled and reports nothing new,
        // yet the new incarnation hears where it stands (a Coordinator's restart shows its migrations moving at once)
        var recovered = CreateTestProbe();
        driver.Send(spm, Step.SyncInternalVolumes, recovered);
        var heard = Assert.IsType<OperationProgress>(await recovered.ReceiveOneAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(driver.Op(Step.SyncInternalVolumes), heard.Operation);
        Assert.InRange(heard.Done, 1, heard.Total - 1);

        stall.Release();
        Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(recovered, heard.Operation));
    }

    [Fact]
    public async Task Pre_copy_step_by_step_through_the_actors_ends_with_the_vm_on_B()
    {
        var hypervisor = _hypervisors[0];
        var (spm, hsm, saga) = (Spm(), Hsm(hypervisor), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);

        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        var syncProgress = new List<OperationProgress>();
        var synced = await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga, progress: syncProgress);
        var ready = await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga);
        await driver.SucceedAsync(hsm, Step.Pivot, saga);
        await driver.SucceedAsync(spm, Step.MarkDestinationLeafLegal, saga);
        await driver.SucceedAsync(spm, Step.DeleteSourceImage, saga);

        Assert.Equal(2 * ChainSeeder.LayerDataBytes, synced.Outcome.BytesCopied);
        Assert.NotEmpty(syncProgress);
        Assert.Equal(synced.Outcome.BytesCopied, syncProgress[^1].Done);
        Assert.Equal(8 * MiB, ready.Outcome.BytesCopied);
        Assert.Equal(_chain.PathsOn(_b, _chain.Base, _chain.Middle, _chain.Leaf), (await DriveAsync(hypervisor)).OpenChain);
        Assert.All((await _b.DescribeImageAsync(_chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(_chain.Image, await _a.ListImagesAsync());
    }

    [Fact]
    public async Task Post_copy_step_by_step_through_the_actors_ends_with_the_vm_on_B()
    {
        var hypervisor = _hypervisors[0];
        var (spm, hsm, saga) = (Spm(), Hsm(hypervisor), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PostCopy);
        var newLeaf = driver.Disk.NewLeaf;

        await driver.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        await driver.SucceedAsync(hsm, Step.LiveSnapshotToDestination, saga);
        Assert.Equal(_b.Locate(_chain.Image, newLeaf), (await DriveAsync(hypervisor)).OpenChain[^1]);
        var cloned = await driver.SucceedAsync(spm, Step.CloneInternalVolumes, saga);
        await driver.SucceedAsync(hsm, Step.SwitchBackingChain, saga);
        await driver.SucceedAsync(spm, Step.DeleteSourceImage, saga);

        Assert.Equal(2 * ChainSeeder.LayerDataBytes + 8 * MiB, cloned.Outcome.BytesCopied);
        Assert.Equal([.. _chain.PathsOn(_b, _chain.Base, _chain.Middle, _chain.Leaf), _b.Locate(_chain.Image, newLeaf)],
            (await DriveAsync(hypervisor)).OpenChain);
        Assert.Equal(new VolumeRef(_b.Id, _chain.Leaf), (await _b.DescribeVolumeAsync(_chain.Image, newLeaf)).Parent);
        Assert.All((await _b.DescribeImageAsync(_chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(_chain.Image, await _a.ListImagesAsync());
    }

    [Fact]
    public async Task The_same_operation_sent_twice_while_it_runs_runs_once_and_answers_both_then_answers_the_same_again()
    {
        var spm = Spm();
        var (first, second, late) = (CreateTestProbe(), CreateTestProbe(), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, first);
        var stall = _b.Faults.StallNext(nameof(IStorageDomain.CopyVolumeDataAsync), atFraction: 0);

        driver.Send(spm, Step.SyncInternalVolumes, first);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        driver.Send(spm, Step.SyncInternalVolumes, second);
        // A second run would not meet the (single) stall and would answer while the first one waits.
        await StepDriver.ExpectNoAnswerAsync(first, TimeSpan.FromMilliseconds(300));
        await StepDriver.ExpectNoAnswerAsync(second, TimeSpan.FromMilliseconds(0));
        stall.Release();

        var op = driver.Op(Step.SyncInternalVolumes);
        var answerOfFirst = Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(first, op));
        var answerOfSecond = Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(second, op));
        Assert.Equal(answerOfFirst, answerOfSecond);
        Assert.Equal(2 * ChainSeeder.LayerDataBytes, answerOfFirst.Outcome.BytesCopied);

        // After it finished: the remembered answer, with no new work (an injected fault would otherwise hit it).
        _b.Faults.FailNext(nameof(IStorageDomain.CopyVolumeDataAsync));
        Assert.Equal(answerOfFirst, await driver.RunAsync(spm, Step.SyncInternalVolumes, late));
        Assert.Equal(1, _b.Faults.PendingCount);
        await StepDriver.ExpectNoAnswerAsync(first, TimeSpan.FromMilliseconds(100));
        await StepDriver.ExpectNoAnswerAsync(second, TimeSpan.Zero);
    }

    [Fact]
    public async Task An_SPM_that_never_saw_the_operation_redoes_it_and_gets_the_same_effect()
    {
        var saga = CreateTestProbe();
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        await driver.SucceedAsync(Spm(), Step.SyncInternalVolumes, saga);

        // A new SPM (the singleton moved): no memory, the storage state answers.
        var again = await driver.SucceedAsync(Spm(), Step.SyncInternalVolumes, saga);
        Assert.Equal(2 * ChainSeeder.LayerDataBytes, again.Outcome.BytesCopied);
        var clone = await _b.DescribeImageAsync(_chain.Image);
        Assert.Equal(Legality.Legal, clone.Volumes[0].Legality);
        Assert.Equal(Legality.Legal, clone.Volumes[1].Legality);
        Assert.Equal(Legality.Illegal, clone.Leaf.Legality);
    }

    [Fact]
    public async Task A_restarted_HSM_adopts_the_running_mirror_and_answers_wait_and_pivot_for_it()
    {
        var old = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 64 * MiB });
        var stall = old.Faults.StallNext(nameof(IHypervisor.StartMirrorAsync), atFraction: 0.5);
        var (spm, saga) = (Spm(), CreateTestProbe());
        var oldHsm = Hsm(old);
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(oldHsm, Step.StartReplication, saga);
        await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));

        // The HostNode goes away; QEMU and its job keep running on the host.
        Watch(oldHsm);
        Sys.Stop(oldHsm);
        await ExpectTerminatedAsync(oldHsm);
        await old.DisposeAsync();
        var hsm = Hsm(NewHypervisor());

        driver.Send(hsm, Step.WaitMirrorReady, saga);
        var waiting = new List<OperationProgress>();
        var op = driver.Op(Step.WaitMirrorReady);
        // Repeating the wait asks for progress; it reads the stalled job.
        driver.Send(hsm, Step.WaitMirrorReady, saga);
        var seen = Assert.IsType<OperationProgress>(await saga.ReceiveOneAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(op, seen.Operation);
        Assert.InRange(seen.Done, 1, seen.Total - 1);
        await StepDriver.ExpectNoAnswerAsync(saga, TimeSpan.FromMilliseconds(200));
        stall.Release();

        var ready = Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(saga, op, waiting));
        Assert.Equal(8 * MiB, ready.Outcome.BytesCopied);
        await driver.SucceedAsync(hsm, Step.Pivot, saga);
        Assert.Equal(_chain.PathsOn(_b, _chain.Base, _chain.Middle, _chain.Leaf), (await DriveAsync(_hypervisors[^1])).OpenChain);
    }

    /// <summary>
    /// A late rollback delete (a resend that crossed its answer) and the roll forward's first storage step at the SPM at
    /// once, the VM gone after its pivot (so no lock of QEMU's refuses the delete). Before, each read the other's mark
    /// before either wrote its own: the roll forward answered the copy kept and LEGAL while the delete removed it. Now
    /// the decision is taken one at a time per image: the step that comes second sees what the first did.
    /// </summary>
    [Fact]
    public async Task A_late_rollback_delete_and_the_roll_forward_at_the_SPM_at_once_never_both_succeed()
    {
        var hypervisor = _hypervisors[0];
        var (spm, hsm, saga, late) = (Spm(), Hsm(hypervisor), CreateTestProbe(), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga);
        await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga);
        await driver.SucceedAsync(hsm, Step.Pivot, saga);
        _host.KillVm(_vm.Id);

        var stall = _b.Faults.StallNext(nameof(IStorageDomain.DeleteOwnedVolumesAsync));
        driver.Send(spm, Step.DeleteDestinationImage, late);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        driver.Send(spm, Step.MarkDestinationLeafLegal, saga);
        await StepDriver.ExpectNoAnswerAsync(saga, TimeSpan.FromMilliseconds(300)); // waits for the delete's decision
        stall.Release();

        Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(late, driver.Op(Step.DeleteDestinationImage)));
        var forward = Assert.IsType<OperationFailed>(await StepDriver.AnswerAsync(saga, driver.Op(Step.MarkDestinationLeafLegal)));
        Assert.Equal(ErrorCodes.MigrationEnded, forward.Code);
        Assert.DoesNotContain(_chain.Image, await _b.ListImagesAsync());
    }

    [Fact]
    public async Task The_VM_killed_during_the_wait_answers_VM_NOT_RUNNING_and_so_does_the_cancel()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 64 * MiB });
        var stall = hypervisor.Faults.StallNext(nameof(IHypervisor.StartMirrorAsync), atFraction: 0.5);
        var (spm, hsm, saga) = (Spm(), Hsm(hypervisor), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));

        driver.Send(hsm, Step.WaitMirrorReady, saga);
        await StepDriver.ExpectNoAnswerAsync(saga, TimeSpan.FromMilliseconds(200));
        _host.KillVm(_vm.Id);

        var died = Assert.IsType<OperationFailed>(await StepDriver.AnswerAsync(saga, driver.Op(Step.WaitMirrorReady)));
        Assert.Equal(ErrorCodes.VmNotRunning, died.Code);
        Assert.False(died.Transient);
        var cancel = Assert.IsType<OperationFailed>(await driver.RunAsync(hsm, Step.CancelReplication, saga));
        Assert.Equal(ErrorCodes.VmNotRunning, cancel.Code);
        stall.Release();
    }

    [Fact]
    public async Task Injected_faults_come_back_as_OperationFailed_with_their_code_and_a_retry_succeeds()
    {
        var hypervisor = _hypervisors[0];
        var (spm, hsm, saga) = (Spm(), Hsm(hypervisor), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy);

        _b.Faults.FailNext(nameof(IStorageDomain.CloneImageStructureAsync), code: ErrorCodes.NotEnoughSpace);
        var full = Assert.IsType<OperationFailed>(await driver.RunAsync(spm, Step.CloneImageStructure, saga));
        Assert.Equal((ErrorCodes.NotEnoughSpace, false), (full.Code, full.Transient));
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga, attempt: 2);

        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        _b.Faults.DieNext(nameof(IStorageDomain.CopyVolumeDataAsync));
        var died = Assert.IsType<OperationFailed>(await driver.RunAsync(spm, Step.SyncInternalVolumes, saga));
        Assert.Equal((ErrorCodes.IoError, true), (died.Code, died.Transient));
        await driver.SucceedAsync(spm, Step.SyncInternalVolumes, saga, attempt: 2);
        await driver.SucceedAsync(hsm, Step.WaitMirrorReady, saga);

        hypervisor.Faults.FailNext(nameof(IHypervisor.PivotAsync), code: ErrorCodes.QmpError);
        var refused = Assert.IsType<OperationFailed>(await driver.RunAsync(hsm, Step.Pivot, saga));
        Assert.Equal((ErrorCodes.QmpError, false), (refused.Code, refused.Transient));
        await driver.SucceedAsync(hsm, Step.Pivot, saga, attempt: 2);
        Assert.Equal(_chain.PathsOn(_b, _chain.Base, _chain.Middle, _chain.Leaf), (await DriveAsync(hypervisor)).OpenChain);

        // A step sent to the wrong host is refused, not half done.
        var wrongHost = Assert.IsType<OperationFailed>(await driver.RunAsync(hsm, Step.DeleteSourceImage, saga));
        Assert.Equal(ErrorCodes.InvalidArgument, wrongHost.Code);
        Assert.Contains(_chain.Image, await _a.ListImagesAsync());
    }

    [Fact]
    public async Task SetStepSpeed_changes_the_running_mirror_speed()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 64 * MiB });
        var (spm, hsm, saga) = (Spm(), Hsm(hypervisor), CreateTestProbe());
        var driver = Driver(MigrationStrategy.PreCopy, speed: 1 * MiB);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await driver.SucceedAsync(hsm, Step.StartReplication, saga);
        Assert.Equal(1 * MiB, (await hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond);

        hsm.Tell(new SetStepSpeed(driver.Op(Step.StartReplication), 0), saga.Ref);

        // the saga's wait then carries the new speed too (a step sent after a change carries it)
        hsm.Tell(driver.Command(Step.WaitMirrorReady) with { SpeedBytesPerSecond = 0 }, saga.Ref);
        var ready = Assert.IsType<OperationSucceeded>(await StepDriver.AnswerAsync(saga, driver.Op(Step.WaitMirrorReady), timeout: TimeSpan.FromSeconds(5)));
        Assert.Equal(8 * MiB, ready.Outcome.BytesCopied);
        Assert.Equal(0, (await hypervisor.GetBlockJobAsync(_vm.Id, _chain.Image))!.SpeedBytesPerSecond);
    }
}
