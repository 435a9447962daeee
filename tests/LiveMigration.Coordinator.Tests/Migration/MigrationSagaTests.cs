using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using static LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.Coordinator.Tests.Migration;

public sealed class MigrationSagaTests
{
    [Fact]
    public void Pre_copy_runs_every_step_in_order_on_the_right_host_and_completes()
    {
        var saga = new SagaDriver();
        Assert.False(saga.Send(new StartMigration(saga.Id, saga.Request(), saga.Facts())).Refused);
        Assert.IsType<MigrationStatus.Queued>(saga.State.Status);
        Assert.IsType<RequestAdmission>(Assert.Single(saga.Actions));
        saga.Send(new AdmitMigration(saga.Id));

        var roles = new List<HostRole>();
        var ops = new List<string>();
        while (saga.Sends.FirstOrDefault() is { } send)
        {
            roles.Add(send.Role);
            ops.Add(send.Operation.ToString());
            saga.Advance(TimeSpan.FromSeconds(2));
            saga.Succeed();
        }

        Assert.Equal([CloneImageStructure, StartReplication, SyncInternalVolumes, WaitMirrorReady, Pivot, MarkDestinationLeafLegal, DeleteSourceImage],
            saga.StepsStarted(saga.Image));
        Assert.Equal([HostRole.Spm, HostRole.Hsm, HostRole.Spm, HostRole.Hsm, HostRole.Hsm, HostRole.Spm, HostRole.Spm], roles);
        Assert.Equal($"{saga.Id}/CloneImageStructure:{saga.Image}/1", ops[0]);
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
        Assert.True(saga.State.PointOfNoReturnPassed);
        Assert.Single(saga.Journal.OfType<PointOfNoReturnPassed>());
        Assert.Equal(DiskPhase.Completed, saga.State.Disk(saga.Image).Phase);
        Assert.Equal(7, saga.State.Disk(saga.Image).StepTimings.Count(t => t.EndedAt - t.StartedAt == TimeSpan.FromSeconds(2)));
        Assert.Equal(saga.Now, saga.State.FinishedAt);
        Assert.Empty(saga.Actions);
    }

    [Fact]
    public void A_switchs_stall_as_its_host_timed_it_is_kept_in_the_steps_timing_and_survives_a_replay()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        saga.Succeed(); // CreateVolumeCrossDomain
        saga.Send(new ReportStepSucceeded(saga.Id, saga.InFlight().Operation, new StepOutcome(SwitchStallMs: 3.5))); // LiveSnapshotToDestination
        saga.Succeed(); // CloneInternalVolumes
        saga.Send(new ReportStepSucceeded(saga.Id, saga.InFlight().Operation, new StepOutcome(SwitchStallMs: 7.25))); // SwitchBackingChain
        saga.SucceedAll(saga.Image);

        var stalls = saga.State.Disk(saga.Image).StepTimings.ToDictionary(t => t.Step, t => t.SwitchStallMs);
        Assert.Equal(3.5, stalls[LiveSnapshotToDestination]);
        Assert.Equal(7.25, stalls[SwitchBackingChain]);
        Assert.Null(stalls[CloneInternalVolumes]);
        Assert.Equal(saga.State.Disk(saga.Image).StepTimings, MigrationState.Replay(saga.Id, saga.Journal).Disk(saga.Image).StepTimings);
    }

    [Fact]
    public void What_a_host_decided_during_a_step_is_kept_as_its_timings_note_shown_in_the_view_and_survives_a_replay()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PreCopy);
        saga.Succeed(); // CloneImageStructure
        saga.Succeed(); // StartReplication
        saga.Succeed(); // SyncInternalVolumes
        Assert.Equal(WaitMirrorReady, saga.InFlight().Step);
        const string why = "the background mirror did not converge: …; started again write-blocking at 10:00:00 UTC";
        saga.Send(new ReportStepSucceeded(saga.Id, saga.InFlight().Operation, new StepOutcome(Note: why)));
        saga.SucceedAll(saga.Image);

        var timings = saga.State.Disk(saga.Image).StepTimings;
        Assert.Equal(why, Assert.Single(timings, t => t.Note is not null).Note);
        Assert.Equal(WaitMirrorReady, timings.Single(t => t.Note is not null).Step);
        Assert.Equal("completed", timings.Single(t => t.Note is not null).Outcome);
        var view = MigrationViews.ViewOf(saga.State, saga.Now);
        Assert.Equal(why, view.Disks[0].Timings.Single(t => t.Step == WaitMirrorReady).Note);
        Assert.Equal(timings, MigrationState.Replay(saga.Id, saga.Journal).Disk(saga.Image).StepTimings);
    }

    [Fact]
    public void A_completed_disk_shows_what_all_its_steps_copied_not_only_the_last_steps_progress()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PreCopy);
        saga.Succeed(); // CloneImageStructure
        saga.Succeed(saga.Image, bytes: 300); // StartReplication (bytes as any step's outcome may report them)
        saga.Succeed(saga.Image, bytes: 700); // SyncInternalVolumes: the internal layers
        saga.SucceedAll(saga.Image);

        var disk = saga.State.Disk(saga.Image);
        Assert.Equal(DiskPhase.Completed, disk.Phase);
        Assert.Equal(0, disk.Done); // the source's deletion copied nothing
        var view = MigrationViews.ViewOf(saga.State, saga.Now);
        Assert.Equal(1_000, view.Disks[0].Copied);
        Assert.Equal(1_000, MigrationState.Replay(saga.Id, saga.Journal).Disk(saga.Image).Copied);
    }

    [Fact]
    public void Post_copy_runs_its_steps_and_passes_the_point_of_no_return_at_the_live_snapshot()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        Assert.Equal(HostRole.Spm, saga.InFlight().Role);
        var newLeaf = saga.InFlight().Disk.NewLeaf;
        Assert.Equal(MigrationDecider.NewLeafId(saga.Id, saga.Image), newLeaf);

        saga.Succeed(); // CreateVolumeCrossDomain
        Assert.Equal(LiveSnapshotToDestination, saga.InFlight().Step);
        Assert.False(saga.State.PointOfNoReturnPassed);
        saga.Succeed();
        Assert.True(saga.State.PointOfNoReturnPassed);
        saga.SucceedAll(saga.Image);

        Assert.Equal([CreateVolumeCrossDomain, LiveSnapshotToDestination, CloneInternalVolumes, SwitchBackingChain, DeleteSourceImage],
            saga.StepsStarted(saga.Image));
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
    }

    [Fact]
    public void A_failure_before_the_pivot_cancels_the_mirror_deletes_the_destination_and_fails_with_the_host_code()
    {
        var saga = new SagaDriver().Begin();
        saga.Succeed(); // CloneImageStructure
        saga.Succeed(); // StartReplication
        Assert.Equal(SyncInternalVolumes, saga.InFlight().Step);
        saga.Fail(ErrorCodes.VerifyFailed);

        Assert.IsType<MigrationStatus.RollingBack>(saga.State.Status);
        Assert.Equal(CancelReplication, saga.InFlight().Step);
        Assert.Equal(HostRole.Hsm, saga.InFlight().Role);
        saga.Succeed();
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        Assert.Equal(HostRole.Spm, saga.InFlight().Role);
        saga.Succeed();

        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Equal(ErrorCodes.VerifyFailed, failed.Code);
        Assert.Contains("SyncInternalVolumes", failed.Message);
        Assert.Equal(DiskPhase.RolledBack, saga.State.Disk(saga.Image).Phase);
        Assert.DoesNotContain(Pivot, saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void A_failed_cross_domain_leaf_in_post_copy_only_deletes_the_destination()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        saga.Fail(ErrorCodes.NotEnoughSpace);
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();
        Assert.Equal(ErrorCodes.NotEnoughSpace, Assert.IsType<MigrationStatus.Failed>(saga.State.Status).Code);
        Assert.DoesNotContain(CancelReplication, saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void Cancel_while_waiting_for_the_mirror_rolls_back_at_once_and_ends_cancelled()
    {
        var saga = new SagaDriver().Begin();
        saga.Succeed(); saga.Succeed(); saga.Succeed();
        var waiting = saga.InFlight();
        Assert.Equal(WaitMirrorReady, waiting.Step);

        Assert.False(saga.Send(new CancelMigration(saga.Id, "operator changed their mind")).Refused);
        Assert.Equal(CancelReplication, saga.InFlight().Step);
        // The wait's late answer belongs to a step the saga left: ignored.
        Assert.Empty(saga.Send(new ReportStepFailed(saga.Id, waiting.Operation, ErrorCodes.JobFailed, "mirror cancelled", false)).Events);
        saga.Succeed();
        saga.Succeed();

        var cancelled = Assert.IsType<MigrationStatus.Cancelled>(saga.State.Status);
        Assert.Equal("operator changed their mind", cancelled.Reason);
        Assert.Equal([CloneImageStructure, StartReplication, SyncInternalVolumes, WaitMirrorReady, CancelReplication, DeleteDestinationImage],
            saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void Cancel_during_a_copy_waits_for_the_copy_to_answer_before_undoing_it()
    {
        var saga = new SagaDriver().Begin();
        var clone = saga.InFlight();
        saga.Send(new CancelMigration(saga.Id));
        Assert.IsType<MigrationStatus.RollingBack>(saga.State.Status);
        // Still the clone in flight: deleting now would race the clone that is still writing.
        Assert.Equal(clone.Operation, saga.InFlight().Operation);
        Assert.Empty(saga.Send(new CancelMigration(saga.Id)).Events);

        saga.Succeed();
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();
        Assert.IsType<MigrationStatus.Cancelled>(saga.State.Status);
        Assert.DoesNotContain(StartReplication, saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void Cancel_during_the_copy_of_the_internal_layers_stops_that_copy_and_undoes_the_disk_once_the_stop_is_answered()
    {
        var saga = new SagaDriver().Begin();
        saga.Succeed();
        saga.Succeed();
        var sync = saga.InFlight();
        Assert.Equal(SyncInternalVolumes, sync.Step);
        Assert.Empty(saga.Actions.OfType<SendStop>());

        saga.Send(new CancelMigration(saga.Id, "operator changed their mind"));
        // The copy is still awaited (its qemu-img may be writing), and asked to stop.
        Assert.Equal(sync.Operation, saga.InFlight().Operation);
        var stop = Assert.Single(saga.Actions.OfType<SendStop>());
        Assert.Equal((HostRole.Spm, sync.Operation), (stop.Role, stop.Operation));
        Assert.Contains("operator changed their mind", stop.Reason);

        saga.Fail(ErrorCodes.StepStopped);
        Assert.Empty(saga.Actions.OfType<SendStop>());
        Assert.Equal(CancelReplication, saga.InFlight().Step);
        saga.Succeed();
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();
        Assert.IsType<MigrationStatus.Cancelled>(saga.State.Status);
    }

    [Fact]
    public void A_failure_of_one_disk_stops_the_copy_of_another_disks_internal_layers_and_a_copy_that_won_the_race_is_undone_too()
    {
        var saga = new SagaDriver(disks: 3).Begin(parallel: 3);
        var (first, second, third) = (saga.Images[0], saga.Images[1], saga.Images[2]);
        foreach (var image in new[] { first, second })
        {
            saga.Succeed(image);
            saga.Succeed(image);
            Assert.Equal(SyncInternalVolumes, saga.InFlight(image).Step);
        }
        // a clone is not stopped: it is short, and its answer starts its disk's rollback
        Assert.Equal(CloneImageStructure, saga.InFlight(third).Step);

        saga.Fail(third, ErrorCodes.NotEnoughSpace);
        Assert.Equal(new HashSet<ImageId> { first, second }, saga.Actions.OfType<SendStop>().Select(s => s.Operation.Image).ToHashSet());
        // the first's copy ended before its stop came: done is done, the rollback undoes it all the same
        saga.Succeed(first);
        saga.Fail(second, ErrorCodes.StepStopped);
        Assert.Empty(saga.Actions.OfType<SendStop>());
        Assert.Equal(CancelReplication, saga.InFlight(first).Step);
        Assert.Equal(CancelReplication, saga.InFlight(second).Step);
        foreach (var image in new[] { first, second, third }) saga.SucceedAll(image);
        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Equal(ErrorCodes.NotEnoughSpace, failed.Code);
    }

    [Fact]
    public void A_vm_reported_stopped_during_the_copy_of_the_internal_layers_fails_the_pre_copy_and_stops_the_copy()
    {
        var saga = new SagaDriver().Begin();
        // before the mirror runs, a stop changes nothing here: the mirror's start fails by itself
        Assert.Empty(saga.Send(new ReportVmStopped(saga.Id, saga.Vm, "host-1")).Events);
        saga.Succeed();
        saga.Succeed();
        var sync = saga.InFlight();
        Assert.Equal(SyncInternalVolumes, sync.Step);
        Assert.Empty(saga.Send(new ReportVmStopped(saga.Id, VmId.New(), "host-1")).Events); // another VM

        saga.Send(new ReportVmStopped(saga.Id, saga.Vm, "host-2"));
        Assert.Equal(sync.Operation, Assert.Single(saga.Actions.OfType<SendStop>()).Operation);
        saga.Fail(ErrorCodes.StepStopped);
        Assert.Equal(CancelReplication, saga.InFlight().Step);
        saga.Fail(ErrorCodes.VmNotRunning); // the host's own answer: no mirror left to cancel
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();
        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Equal(ErrorCodes.VmNotRunning, failed.Code);
        Assert.Contains("stopped on host host-2", failed.Message);
        Assert.Empty(saga.Send(new ReportVmStopped(saga.Id, saga.Vm, "host-2")).Events);
    }

    [Fact]
    public void A_vm_reported_stopped_leaves_a_post_copy_a_mirror_wait_a_pivot_and_a_migration_being_undone_to_their_own_answers()
    {
        var post = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        post.Succeed();
        post.Succeed(); // the live snapshot: past the point of no return
        Assert.Empty(post.Send(new ReportVmStopped(post.Id, post.Vm, "host-1")).Events);

        var pre = new SagaDriver().Begin();
        foreach (var step in new[] { CloneImageStructure, StartReplication, SyncInternalVolumes })
        {
            Assert.Equal(step, pre.InFlight().Step);
            pre.Succeed();
        }
        Assert.Equal(WaitMirrorReady, pre.InFlight().Step); // fails by itself with the VM gone
        Assert.Empty(pre.Send(new ReportVmStopped(pre.Id, pre.Vm, "host-1")).Events);
        pre.Succeed();
        Assert.Equal(Pivot, pre.InFlight().Step); // its outcome, or the probe after it, decides
        Assert.Empty(pre.Send(new ReportVmStopped(pre.Id, pre.Vm, "host-1")).Events);

        var cancelled = new SagaDriver().Begin();
        cancelled.Succeed();
        cancelled.Succeed();
        cancelled.Send(new CancelMigration(cancelled.Id));
        Assert.Empty(cancelled.Send(new ReportVmStopped(cancelled.Id, cancelled.Vm, "host-1")).Events);
    }

    [Fact]
    public void A_copy_still_in_use_at_its_delete_has_its_mirror_cancelled_again_first_with_operation_ids_never_used_before()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(3, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(4)));
        saga.Succeed();
        saga.Succeed();
        saga.Send(new CancelMigration(saga.Id));
        saga.Fail(ErrorCodes.StepStopped);
        var firstCancel = saga.InFlight();
        Assert.Equal(CancelReplication, firstCancel.Step);
        saga.Succeed();
        var firstDelete = saga.InFlight();
        Assert.Equal(DeleteDestinationImage, firstDelete.Step);

        // a mirror writes into the copy again (a late start of it): the delete is refused while QEMU has it open
        saga.Fail(ErrorCodes.VolumeInUse, transient: true);
        var again = saga.InFlight();
        Assert.Equal(CancelReplication, again.Step);
        Assert.NotEqual(firstCancel.Operation, again.Operation); // a host that remembers the first answer would not cancel
        saga.Succeed();
        var delete = saga.InFlight();
        Assert.Equal(DeleteDestinationImage, delete.Step);
        Assert.NotEqual(firstDelete.Operation, delete.Operation);
        saga.Succeed();
        Assert.IsType<MigrationStatus.Cancelled>(saga.State.Status);
    }

    [Fact]
    public void A_rollback_whose_first_mirror_cancel_was_retried_still_cancels_again_when_its_copy_is_in_use()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(5, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(4)));
        saga.Succeed();
        saga.Succeed();
        saga.Send(new CancelMigration(saga.Id));
        saga.Fail(ErrorCodes.StepStopped);
        for (var retry = 0; retry < 3; retry++)
        {
            // the restarted HSM answers its first cancels TIMEOUT (its adoption still running)
            Assert.Equal(CancelReplication, saga.InFlight().Step);
            saga.Fail(ErrorCodes.Timeout, transient: true);
            saga.Advance(TimeSpan.FromSeconds(10));
            saga.Send(new RetryDue(saga.Id));
        }
        saga.Succeed();
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Fail(ErrorCodes.VolumeInUse, transient: true);
        Assert.Equal(CancelReplication, saga.InFlight().Step);
    }

    [Fact]
    public void A_copy_that_stays_in_use_is_cancelled_again_a_bounded_number_of_times_then_waits_for_an_operator()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(4)));
        saga.Succeed();
        saga.Succeed();
        saga.Send(new CancelMigration(saga.Id));
        saga.Fail(ErrorCodes.StepStopped);
        var cancels = 0;
        for (var round = 0; round < 20 && saga.State.Status is not MigrationStatus.Suspended; round++)
        {
            if (saga.Sends.Count == 0)
            {
                saga.Advance(TimeSpan.FromSeconds(10));
                saga.Send(new RetryDue(saga.Id));
                continue;
            }
            if (saga.InFlight().Step == CancelReplication)
            {
                cancels++;
                saga.Succeed();
            }
            else
                saga.Fail(ErrorCodes.VolumeInUse, transient: true);
        }
        Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);
        Assert.Equal(3, cancels); // the rollback's own, and two more
    }

    [Fact]
    public void Cancel_of_a_queued_migration_ends_it_with_nothing_to_undo()
    {
        var saga = new SagaDriver();
        saga.Send(new StartMigration(saga.Id, saga.Request(), saga.Facts()));
        saga.Send(new CancelMigration(saga.Id));
        Assert.IsType<MigrationStatus.Cancelled>(saga.State.Status);
        Assert.Empty(saga.Actions);
        Assert.Empty(saga.Send(new AdmitMigration(saga.Id)).Events);
    }

    [Fact]
    public void Cancel_is_refused_once_the_pivot_is_sent_and_after_it()
    {
        var saga = new SagaDriver().Begin();
        for (var i = 0; i < 4; i++) saga.Succeed();
        Assert.Equal(Pivot, saga.InFlight().Step);

        var during = saga.Send(new CancelMigration(saga.Id));
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, during.RefusalCode);
        Assert.Contains("Pivot", during.RefusalMessage);
        Assert.Empty(during.Events);

        saga.Succeed();
        var after = saga.Send(new CancelMigration(saga.Id));
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, after.RefusalCode);
        Assert.Contains(saga.Image.ToString(), after.RefusalMessage);
        Assert.IsType<MigrationStatus.Running>(saga.State.Status);

        saga.SucceedAll(saga.Image);
        Assert.Equal(MigrationErrorCodes.MigrationFinished, saga.Send(new CancelMigration(saga.Id)).RefusalCode);
    }

    [Fact]
    public void A_pivot_that_fails_for_good_did_not_switch_and_rolls_back()
    {
        var saga = new SagaDriver().Begin();
        for (var i = 0; i < 4; i++) saga.Succeed();
        saga.Fail(ErrorCodes.QmpError);
        Assert.False(saga.State.PointOfNoReturnPassed);
        // Nothing is undone before the probe says the drive still runs on the source.
        Assert.Equal(ProbeSwitch, saga.InFlight().Step);
        saga.Probed(SwitchFinding.OnSource);
        saga.SucceedAll(saga.Image);
        Assert.Equal(ErrorCodes.QmpError, Assert.IsType<MigrationStatus.Failed>(saga.State.Status).Code);
        Assert.Equal(DiskPhase.RolledBack, saga.State.Disk(saga.Image).Phase);
    }

    [Theory]
    [InlineData(ErrorCodes.Timeout, true)]
    [InlineData(ErrorCodes.VmNotRunning, false)]
    [InlineData(ErrorCodes.QmpError, false)]
    public void A_pivot_whose_answer_failed_but_took_effect_rolls_forward_and_never_deletes_the_destination(string code, bool transient)
    {
        var saga = new SagaDriver().Begin();
        for (var i = 0; i < 4; i++) saga.Succeed();
        saga.Fail(code, transient);
        Assert.Equal(ProbeSwitch, saga.InFlight().Step);
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, saga.Send(new CancelMigration(saga.Id, "operator")).RefusalCode);
        saga.Probed(SwitchFinding.OnDestination);
        Assert.True(saga.State.PointOfNoReturnPassed);
        Assert.Equal([MarkDestinationLeafLegal, DeleteSourceImage], saga.SucceedAll(saga.Image));
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
        Assert.DoesNotContain(DeleteDestinationImage, saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void A_live_snapshot_that_failed_is_probed_and_a_switch_nobody_can_tell_suspends_without_deleting()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        saga.Succeed(); // CreateVolumeCrossDomain
        saga.Fail(ErrorCodes.VmNotRunning);
        Assert.Equal(ProbeSwitch, saga.InFlight().Step);
        saga.Fail(ErrorCodes.SwitchOutcomeUnknown);
        var suspended = Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);
        Assert.Equal(ProbeSwitch, suspended.Step);
        Assert.Contains("nothing was deleted", suspended.Reason);
        Assert.Empty(saga.Sends);
        // An operator's cancel cannot roll back a switch in doubt; a resume probes again.
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, saga.Send(new CancelMigration(saga.Id, "operator")).RefusalCode);
        saga.Send(new ResumeMigration(saga.Id));
        Assert.Equal(ProbeSwitch, saga.InFlight().Step);
        saga.Probed(SwitchFinding.OnDestination);
        Assert.Equal([CloneInternalVolumes, SwitchBackingChain, DeleteSourceImage], saga.SucceedAll(saga.Image));
        Assert.DoesNotContain(DeleteDestinationImage, saga.StepsStarted(saga.Image));
    }

    [Fact]
    public void Abandon_is_refused_where_the_disk_would_be_left_unsafe_a_pivoted_disk_on_an_illegal_leaf_or_a_mirror_not_cancelled()
    {
        var retry = new RetryPolicy(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
        // pivoted, then the SPM cannot mark the destination leaf LEGAL
        var pivoted = new SagaDriver().Begin(retry: retry);
        for (var i = 0; i < 5; i++) pivoted.Succeed();
        Assert.Equal(MarkDestinationLeafLegal, pivoted.InFlight().Step);
        pivoted.Fail(ErrorCodes.IoError, transient: true);
        pivoted.Advance(TimeSpan.FromSeconds(2));
        pivoted.Send(new RetryDue(pivoted.Id));
        pivoted.Fail(ErrorCodes.IoError, transient: true);
        Assert.IsType<MigrationStatus.Suspended>(pivoted.State.Status);
        var refused = pivoted.Send(new AbandonMigration(pivoted.Id));
        Assert.True(refused.Refused);
        Assert.Contains("not marked LEGAL", refused.RefusalMessage);
        pivoted.Send(new ResumeMigration(pivoted.Id));
        Assert.Equal([MarkDestinationLeafLegal, DeleteSourceImage], pivoted.SucceedAll(pivoted.Image));

        // a cancel whose mirror cancel keeps failing
        var cancelled = new SagaDriver().Begin(retry: retry);
        cancelled.Succeed(); cancelled.Succeed(); // CloneImageStructure, StartReplication
        cancelled.Send(new CancelMigration(cancelled.Id, "operator"));
        cancelled.Succeed(); // SyncInternalVolumes, in flight at the cancel, finishes first
        Assert.Equal(CancelReplication, cancelled.InFlight().Step);
        cancelled.Fail(ErrorCodes.QmpError);
        cancelled.Advance(TimeSpan.FromSeconds(2));
        cancelled.Send(new RetryDue(cancelled.Id));
        cancelled.Fail(ErrorCodes.QmpError);
        Assert.Equal(CancelReplication, cancelled.State.Disk(cancelled.Image).Step);
        Assert.Equal(DiskPhase.Suspended, cancelled.State.Disk(cancelled.Image).Phase);
        Assert.Contains("mirror may still copy", cancelled.Send(new AbandonMigration(cancelled.Id)).RefusalMessage);
    }

    [Fact]
    public void Vm_not_running_rolls_back_even_if_the_mirror_is_gone_and_fails_with_VM_NOT_RUNNING()
    {
        var saga = new SagaDriver().Begin();
        saga.Succeed(); saga.Succeed(); saga.Succeed();
        saga.Fail(ErrorCodes.VmNotRunning);

        Assert.Equal(CancelReplication, saga.InFlight().Step);
        // QEMU is gone, so is its mirror: nothing to cancel, go on with the delete.
        saga.Fail(ErrorCodes.VmNotRunning);
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();

        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Equal(ErrorCodes.VmNotRunning, failed.Code);
        Assert.Contains("every disk was rolled back", failed.Message);
    }

    [Fact]
    public void A_rollback_whose_vm_no_host_has_reported_yet_asks_again_instead_of_deleting_the_destination()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30)));
        saga.Succeed(); saga.Succeed(); saga.Succeed();
        saga.Fail(ErrorCodes.VerifyFailed);
        Assert.Equal(CancelReplication, saga.InFlight().Step);

        // The gateway's "no host has reported VM ... yet": a restarted host may still run the mirror into the destination.
        saga.Fail(ErrorCodes.VmNotFound, transient: true);
        Assert.DoesNotContain(DeleteDestinationImage, saga.StepsStarted(saga.Image));
        Assert.Single(saga.Journal.OfType<RetryScheduled>());

        saga.Advance(TimeSpan.FromSeconds(2));
        saga.Send(new RetryDue(saga.Id));
        Assert.Equal(CancelReplication, saga.InFlight().Step);
        saga.Fail(ErrorCodes.VmNotFound, transient: true);
        // Out of attempts and still nobody who can say: suspended with the destination kept, never deleted blind.
        Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);
        Assert.DoesNotContain(DeleteDestinationImage, saga.StepsStarted(saga.Image));

        // The host's own answer that it has no such VM is an answer: nothing runs a mirror, so the delete goes on.
        var answered = new SagaDriver().Begin();
        answered.Succeed(); answered.Succeed(); answered.Succeed();
        answered.Fail(ErrorCodes.VerifyFailed);
        answered.Fail(ErrorCodes.VmNotFound);
        Assert.Equal(DeleteDestinationImage, answered.InFlight().Step);
    }

    [Fact]
    public void Transient_failures_retry_with_doubling_delays_then_fail_and_roll_back()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(3, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30)));
        var first = saga.InFlight().Operation;
        saga.Fail(ErrorCodes.Timeout, transient: true);

        var retry = Assert.Single(saga.Journal.OfType<RetryScheduled>());
        Assert.Equal(TimeSpan.FromSeconds(1), retry.Delay);
        Assert.Empty(saga.Sends);
        Assert.Equal(new WakeAt(SagaDriver.T0 + TimeSpan.FromSeconds(1)), Assert.Single(saga.Actions));
        Assert.Empty(saga.Send(new RetryDue(saga.Id)).Events); // not due yet
        // The failed attempt's own late answer is stale now.
        Assert.Empty(saga.Send(new ReportStepSucceeded(saga.Id, first, new StepOutcome())).Events);

        saga.Advance(TimeSpan.FromSeconds(1));
        saga.Send(new RetryDue(saga.Id));
        Assert.Equal(first with { Attempt = 2 }, saga.InFlight().Operation);
        saga.Fail(ErrorCodes.Timeout, transient: true);
        Assert.Equal(TimeSpan.FromSeconds(2), saga.Journal.OfType<RetryScheduled>().Last().Delay);

        saga.Advance(TimeSpan.FromSeconds(2));
        saga.Send(new RetryDue(saga.Id));
        Assert.Equal(3, saga.InFlight().Operation.Attempt);
        saga.Fail(ErrorCodes.Timeout, transient: true);

        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Succeed();
        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Equal(ErrorCodes.Timeout, failed.Code);
        Assert.Contains("after 3 attempts", failed.Message);
    }

    [Fact]
    public void Backoff_doubles_and_stops_at_the_cap()
    {
        var policy = new RetryPolicy(10, TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(3));
        Assert.Equal([500, 1000, 2000, 3000, 3000], Enumerable.Range(1, 5).Select(n => policy.DelayAfter(n).TotalMilliseconds));
    }

    [Fact]
    public void After_the_live_snapshot_failures_retry_then_suspend_and_resume_completes_with_a_new_attempt()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy, retry: new RetryPolicy(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30)));
        saga.Succeed(); saga.Succeed();
        Assert.Equal(CloneInternalVolumes, saga.InFlight().Step);

        saga.Fail(ErrorCodes.QemuImgFailed); // not transient, but past the point of no return: roll forward
        Assert.Single(saga.Journal.OfType<RetryScheduled>());
        saga.Advance(TimeSpan.FromSeconds(1));
        saga.Send(new RetryDue(saga.Id));
        saga.Fail(ErrorCodes.QemuImgFailed);

        var suspended = Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);
        Assert.Equal(CloneInternalVolumes, suspended.Step);
        Assert.Contains("QEMU_IMG_FAILED", suspended.Reason);
        Assert.Contains("after 2 attempts", suspended.Reason);
        Assert.Empty(saga.Actions);
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, saga.Send(new CancelMigration(saga.Id)).RefusalCode);
        Assert.DoesNotContain(DeleteDestinationImage, saga.StepsStarted(saga.Image));

        saga.Send(new ResumeMigration(saga.Id));
        Assert.IsType<MigrationStatus.Running>(saga.State.Status);
        Assert.Equal(new OperationId(saga.Id, CloneInternalVolumes, saga.Image, 3), saga.InFlight().Operation);
        saga.SucceedAll(saga.Image);
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
        Assert.Equal(MigrationErrorCodes.NotSuspended, saga.Send(new ResumeMigration(saga.Id)).RefusalCode);
    }

    [Fact]
    public void Vm_gone_after_the_point_of_no_return_suspends_without_retrying()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy);
        saga.Succeed(); saga.Succeed(); saga.Succeed();
        saga.Fail(ErrorCodes.VmNotRunning);
        Assert.Equal(SwitchBackingChain, Assert.IsType<MigrationStatus.Suspended>(saga.State.Status).Step);
        Assert.Empty(saga.Journal.OfType<RetryScheduled>());
    }

    [Fact]
    public void Abandon_ends_a_suspended_migration_and_is_refused_otherwise()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy, retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        Assert.Equal(MigrationErrorCodes.NotSuspended, saga.Send(new AbandonMigration(saga.Id)).RefusalCode);
        saga.Succeed(); saga.Succeed();
        saga.Fail(ErrorCodes.IoError, transient: true);
        Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);

        Assert.False(saga.Send(new AbandonMigration(saga.Id)).Refused);
        Assert.IsType<MigrationStatus.Abandoned>(saga.State.Status);
        Assert.Equal(DiskPhase.Abandoned, saga.State.Disk(saga.Image).Phase);
        Assert.Empty(saga.Actions);
        Assert.Equal(MigrationErrorCodes.NotSuspended, saga.Send(new ResumeMigration(saga.Id)).RefusalCode);
        Assert.Equal(MigrationErrorCodes.MigrationFinished, saga.Send(new CancelMigration(saga.Id)).RefusalCode);
    }

    [Fact]
    public void Abandon_removes_the_destination_copy_of_a_disk_whose_rollback_delete_was_suspended()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        saga.Fail(ErrorCodes.NotEnoughSpace); // CloneImageStructure, a permanent failure: roll back
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step);
        saga.Fail(ErrorCodes.IoError, transient: true);
        Assert.Equal(DeleteDestinationImage, Assert.IsType<MigrationStatus.Suspended>(saga.State.Status).Step);

        Assert.False(saga.Send(new AbandonMigration(saga.Id)).Refused);
        Assert.Single(saga.Journal.OfType<AbandonStarted>());
        Assert.StartsWith("abandoning", MigrationDecider.Describe(saga.State.Status));
        Assert.Equal(DeleteDestinationImage, saga.InFlight().Step); // the abandon's clean-up: the same owner-checked delete
        saga.Succeed();

        Assert.IsType<MigrationStatus.Abandoned>(saga.State.Status);
        Assert.Equal(DiskPhase.Abandoned, saga.State.Disk(saga.Image).Phase);
        Assert.Empty(Assert.Single(saga.Journal.OfType<MigrationAbandoned>()).LeftBehind!);
        Assert.Empty(saga.Actions);
    }

    [Fact]
    public void An_abandon_whose_removal_fails_suspends_again_and_a_second_abandon_names_what_it_leaves()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        for (var i = 0; i < 6; i++) saga.Succeed(); // up to DeleteSourceImage, past the pivot
        Assert.Equal(DeleteSourceImage, saga.InFlight().Step);
        saga.Fail(ErrorCodes.VolumeInUse);
        Assert.Equal(DeleteSourceImage, Assert.IsType<MigrationStatus.Suspended>(saga.State.Status).Step);

        saga.Send(new AbandonMigration(saga.Id));
        Assert.Equal(DeleteSourceImage, saga.InFlight().Step); // after the switch: the source chain is what goes
        saga.Fail(ErrorCodes.VolumeInUse);
        Assert.IsType<MigrationStatus.Suspended>(saga.State.Status);
        Assert.Equal(TerminationKind.Abandon, saga.State.Termination!.Kind);

        Assert.False(saga.Send(new AbandonMigration(saga.Id)).Refused);
        Assert.IsType<MigrationStatus.Abandoned>(saga.State.Status);
        var left = Assert.Single(saga.State.LeftBehind!);
        Assert.Equal(saga.Source, left.Domain);
        Assert.Contains("source chain", left.What);
        Assert.Contains(ErrorCodes.VolumeInUse, left.Remove);
        Assert.Equal(left, Assert.Single(MigrationViews.ViewOf(saga.State, saga.Now).LeftBehind!));
    }

    [Fact]
    public void A_resume_of_a_suspended_abandon_retries_the_removal_and_ends_abandoned()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        for (var i = 0; i < 6; i++) saga.Succeed();
        saga.Fail(ErrorCodes.VolumeInUse);
        saga.Send(new AbandonMigration(saga.Id));
        saga.Fail(ErrorCodes.VolumeInUse);

        saga.Send(new ResumeMigration(saga.Id));
        Assert.Equal(DeleteSourceImage, saga.InFlight().Step);
        saga.Succeed();
        Assert.IsType<MigrationStatus.Abandoned>(saga.State.Status);
        Assert.Empty(saga.State.LeftBehind!);
    }

    [Fact]
    public void Abandoning_a_post_copy_disk_between_its_live_snapshot_and_backing_switch_removes_nothing_and_names_both_domains()
    {
        var saga = new SagaDriver().Begin(MigrationStrategy.PostCopy, retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        saga.Succeed(); saga.Succeed(); // CreateVolumeCrossDomain, LiveSnapshotToDestination
        saga.Fail(ErrorCodes.IoError, transient: true); // CloneInternalVolumes
        saga.Send(new AbandonMigration(saga.Id));
        Assert.Empty(saga.Actions);
        // the new leaf reads the older layers on the source unless the backing switch took effect: both sides named
        Assert.Equal([saga.Source, saga.Destination], saga.State.LeftBehind!.Select(l => l.Domain));
        // what is true: only a post-copy to the leaf's domain moves such a chain (before, it told the operator to move the disk again)
        Assert.All(saga.State.LeftBehind!, l => Assert.Contains($"--to {saga.Destination} --disk {saga.Image} --strategy post-copy", l.Remove));
    }

    [Fact]
    public void Duplicate_and_stale_results_change_nothing()
    {
        var saga = new SagaDriver().Begin();
        var clone = saga.InFlight().Operation;
        saga.Succeed();
        var replication = saga.InFlight().Operation;
        var before = saga.State;
        var journalLength = saga.Journal.Count;

        IMigrationCommand[] noise =
        [
            new ReportStepSucceeded(saga.Id, clone, new StepOutcome()),                       // a repeat
            new ReportStepFailed(saga.Id, clone, ErrorCodes.IoError, "late", false),            // a late failure of a finished step
            new ReportStepSucceeded(saga.Id, replication with { Attempt = 7 }, new StepOutcome()), // an attempt never sent
            new ReportStepSucceeded(saga.Id, replication with { Step = Pivot }, new StepOutcome()), // another step
            new ReportStepSucceeded(saga.Id, replication with { Image = ImageId.New() }, new StepOutcome()), // another disk
            new ReportProgress(saga.Id, clone, 5, 10),
        ];
        foreach (var command in noise)
        {
            var decision = saga.Send(command);
            Assert.False(decision.Refused);
            Assert.Empty(decision.Events);
        }
        Assert.Equal(before, saga.State);
        Assert.Equal(journalLength, saga.Journal.Count);

        var other = MigrationId.New();
        Assert.True(saga.Send(new ReportStepSucceeded(other, replication with { Migration = other }, new StepOutcome())).Refused);
    }

    [Fact]
    public void Progress_is_recorded_once_per_change_and_gives_an_eta()
    {
        var saga = new SagaDriver().Begin();
        saga.Succeed(); saga.Succeed(); saga.Succeed();
        var wait = saga.InFlight().Operation;
        saga.Advance(TimeSpan.FromSeconds(10));
        Assert.Single(saga.Send(new ReportProgress(saga.Id, wait, 250, 1000)).Events);
        Assert.Empty(saga.Send(new ReportProgress(saga.Id, wait, 250, 1000)).Events);

        var disk = saga.State.Disk(saga.Image);
        Assert.Equal((250L, 1000L), (disk.Done, disk.Total));
        Assert.Equal(TimeSpan.FromSeconds(30), disk.EstimateRemaining(saga.Now));
        var reported = Assert.Single(saga.Journal.OfType<ProgressReported>());
        Assert.Equal(WaitMirrorReady, reported.Step);
    }

    [Fact]
    public void Replaying_the_journal_rebuilds_the_same_state_and_resends_the_same_operation()
    {
        var saga = new SagaDriver(disks: 2).Begin(parallel: 2);
        saga.Succeed(saga.Images[0]);
        saga.Fail(saga.Images[1], ErrorCodes.Timeout, transient: true);
        saga.Advance(TimeSpan.FromSeconds(1));
        saga.Send(new RetryDue(saga.Id));
        saga.Send(new ReportProgress(saga.Id, saga.InFlight(saga.Images[0]).Operation, 10, 100));
        var beforeCrash = saga.Actions;

        var recovered = MigrationState.Replay(saga.Id, saga.Journal);

        Assert.Equal(saga.State, recovered);
        Assert.Equal(beforeCrash, MigrationActions.Next(recovered));
        Assert.Contains(beforeCrash.OfType<SendStep>(), s => s.Operation == new OperationId(saga.Id, CloneImageStructure, saga.Images[1], 2));

        // A replay of a finished migration is finished too.
        while (saga.Sends.FirstOrDefault() is { } send) saga.Succeed(send.Disk.Image);
        Assert.Equal(saga.State, MigrationState.Replay(saga.Id, saga.Journal));
        Assert.IsType<MigrationStatus.Completed>(MigrationState.Replay(saga.Id, saga.Journal).Status);
    }

    [Fact]
    public void One_disk_at_a_time_with_parallelism_one()
    {
        var saga = new SagaDriver(disks: 2).Begin(parallel: 1, bandwidth: 100_000_000);
        Assert.Equal(saga.Images[0], Assert.Single(saga.Sends).Disk.Image);
        Assert.Equal(100_000_000, saga.Sends[0].SpeedBytesPerSecond);

        saga.SucceedAll(saga.Images[0]);
        Assert.Equal(DiskPhase.Completed, saga.State.Disk(saga.Images[0]).Phase);
        Assert.Equal(saga.Images[1], Assert.Single(saga.Sends).Disk.Image);
        saga.SucceedAll(saga.Images[1]);
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);

        var firstOfSecond = saga.Journal.FindIndex(e => e is StepStarted s && s.Image == saga.Images[1]);
        var lastOfFirst = saga.Journal.FindLastIndex(e => e is StepStarted s && s.Image == saga.Images[0]);
        Assert.True(firstOfSecond > lastOfFirst);
    }

    [Fact]
    public void Two_disks_move_together_with_parallelism_two_sharing_the_bandwidth()
    {
        var saga = new SagaDriver(disks: 2).Begin(parallel: 2, bandwidth: 100_000_000);
        Assert.Equal(saga.Images.ToHashSet(), saga.Sends.Select(s => s.Disk.Image).ToHashSet());
        Assert.All(saga.Sends, s => Assert.Equal(50_000_000, s.SpeedBytesPerSecond));

        while (saga.Sends.Count > 0)
            foreach (var send in saga.Sends) saga.Succeed(send.Disk.Image);
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
        Assert.All(saga.State.Disks, d => Assert.Equal(DiskPhase.Completed, d.Phase));
    }

    [Fact]
    public void A_failing_disk_rolls_back_the_others_and_skips_the_ones_not_started()
    {
        var saga = new SagaDriver(disks: 3).Begin(parallel: 2);
        var (a, b, c) = (saga.Images[0], saga.Images[1], saga.Images[2]);
        saga.Succeed(a); saga.Succeed(a); saga.Succeed(a); // a waits for its mirror
        saga.Fail(b, ErrorCodes.NotEnoughSpace);

        Assert.Equal(CancelReplication, saga.InFlight(a).Step);
        Assert.Equal(DeleteDestinationImage, saga.InFlight(b).Step);
        Assert.Equal(DiskPhase.Skipped, saga.State.Disk(c).Phase);
        saga.SucceedAll(a);
        saga.SucceedAll(b);
        Assert.Equal(ErrorCodes.NotEnoughSpace, Assert.IsType<MigrationStatus.Failed>(saga.State.Status).Code);
        Assert.Empty(saga.StepsStarted(c));
    }

    [Fact]
    public void A_disk_whose_pivot_is_in_flight_when_another_fails_rolls_forward_if_the_pivot_worked()
    {
        var saga = new SagaDriver(disks: 2).Begin(parallel: 2);
        var (a, b) = (saga.Images[0], saga.Images[1]);
        for (var i = 0; i < 4; i++) saga.Succeed(a);
        Assert.Equal(Pivot, saga.InFlight(a).Step);
        saga.Fail(b, ErrorCodes.VerifyFailed);

        Assert.Equal(Pivot, saga.InFlight(a).Step);
        saga.SucceedAll(a);
        saga.SucceedAll(b);
        Assert.Equal(DiskPhase.Completed, saga.State.Disk(a).Phase);
        Assert.Equal(DiskPhase.RolledBack, saga.State.Disk(b).Phase);
        var failed = Assert.IsType<MigrationStatus.Failed>(saga.State.Status);
        Assert.Contains(a.ToString(), failed.Message);
    }

    [Fact]
    public void A_rollback_step_that_keeps_failing_suspends_and_resume_finishes_the_rollback()
    {
        var saga = new SagaDriver().Begin(retry: new RetryPolicy(1, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        saga.Fail(ErrorCodes.IoError);
        saga.Fail(ErrorCodes.IoError); // the delete of the destination
        Assert.Equal(DeleteDestinationImage, Assert.IsType<MigrationStatus.Suspended>(saga.State.Status).Step);

        saga.Send(new ResumeMigration(saga.Id));
        Assert.IsType<MigrationStatus.RollingBack>(saga.State.Status);
        Assert.Equal(2, saga.InFlight().Operation.Attempt);
        saga.Succeed();
        Assert.Equal(ErrorCodes.IoError, Assert.IsType<MigrationStatus.Failed>(saga.State.Status).Code);
    }
}
