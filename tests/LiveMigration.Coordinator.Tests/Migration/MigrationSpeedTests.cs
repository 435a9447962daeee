using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Tests.Migration;

/// <summary>The operator's speed change (lsm migration set-speed): recorded, sent to what runs, refused when over.</summary>
public sealed class MigrationSpeedTests
{
    [Fact]
    public void A_new_speed_is_persisted_reaches_the_running_mirror_and_copy_sharing_it_and_is_carried_by_a_step_sent_again_after_a_restart()
    {
        var saga = new SagaDriver().Begin(bandwidth: 10_000_000);
        saga.Succeed(); // CloneImageStructure
        Assert.Equal(MigrationStep.StartReplication, saga.InFlight().Step);
        saga.Succeed(); // the mirror runs from here on
        Assert.Equal(MigrationStep.SyncInternalVolumes, saga.InFlight().Step);

        var decision = saga.Send(new SetMigrationSpeed(saga.Id, 50_000_000));
        var changed = Assert.IsType<MigrationSpeedChanged>(Assert.Single(decision.Events));
        Assert.Equal(50_000_000, changed.BytesPerSecond);

        // At once: the HSM's mirror and the SPM's copy in flight, both under the step's operation id; they run side by side
        // and share the limit.
        var changes = MigrationActions.SpeedChanges(saga.State);
        Assert.Contains(changes, c => c is { Role: HostRole.Hsm, SpeedBytesPerSecond: 25_000_000 } && c.Operation.Image == saga.Image);
        Assert.Contains(changes, c => c is { Role: HostRole.Spm, SpeedBytesPerSecond: 25_000_000 } && c.Operation.Step == MigrationStep.SyncInternalVolumes);

        // After a restart the state comes from the journal alone, and the step in flight goes out with the new speed.
        var recovered = MigrationState.Replay(saga.Id, saga.Journal);
        Assert.Equal(50_000_000, recovered.Request!.BandwidthBytesPerSecond);
        Assert.Equal(25_000_000, Assert.Single(MigrationActions.Next(recovered).OfType<SendStep>()).SpeedBytesPerSecond);

        // Once the internal layers are copied, the mirror alone has the whole limit: the wait carries it, and so does a change.
        saga.Succeed(); // SyncInternalVolumes
        Assert.Equal((MigrationStep.WaitMirrorReady, 50_000_000), (saga.InFlight().Step, Assert.Single(MigrationActions.Next(saga.State).OfType<SendStep>()).SpeedBytesPerSecond));
        saga.Send(new SetMigrationSpeed(saga.Id, 40_000_000));
        Assert.Equal(40_000_000, Assert.Single(MigrationActions.SpeedChanges(saga.State)).SpeedBytesPerSecond);
    }

    [Fact]
    public void The_disks_still_moving_share_the_budget_the_finished_ones_no_longer_use_their_mirrors_at_once()
    {
        var saga = new SagaDriver(disks: 3).Begin(parallel: 2, bandwidth: 100_000_000);
        var (a, b, c) = (saga.Images[0], saga.Images[1], saga.Images[2]);
        long SentTo(ImageId disk) => Assert.Single(MigrationActions.Next(saga.State).OfType<SendStep>(), s => s.Disk.Image == disk).SpeedBytesPerSecond;
        Assert.Equal((50_000_000, 50_000_000), (SentTo(a), SentTo(b)));

        saga.SucceedAll(a);
        Assert.Equal(50_000_000, SentTo(c)); // b and c move: half each
        saga.Succeed(c); // CloneImageStructure
        saga.Succeed(c); // StartReplication: c's mirror runs beside its internal copy
        Assert.Equal(MigrationStep.SyncInternalVolumes, saga.InFlight(c).Step);
        Assert.Equal(25_000_000, SentTo(c));

        saga.SucceedAll(b);
        // c alone: the whole budget, its mirror told at once (half of it beside the SPM's copy), the running qemu-img left
        // at its rate (a new one would copy its layer again)
        var raised = Assert.Single(MigrationActions.SpeedChanges(saga.State, mirrorsOnly: true));
        Assert.Equal((HostRole.Hsm, 50_000_000L), (raised.Role, raised.SpeedBytesPerSecond));
        saga.Succeed(c); // SyncInternalVolumes
        Assert.Equal((MigrationStep.WaitMirrorReady, 100_000_000L), (saga.InFlight(c).Step, SentTo(c)));
    }

    [Fact]
    public void The_same_speed_again_records_nothing_and_a_negative_one_is_refused()
    {
        var saga = new SagaDriver().Begin(bandwidth: 1_000);
        Assert.Empty(saga.Send(new SetMigrationSpeed(saga.Id, 1_000)).Events);
        var negative = saga.Send(new SetMigrationSpeed(saga.Id, -1));
        Assert.True(negative.Refused);
        Assert.Equal(ErrorCodes.InvalidArgument, negative.RefusalCode);
    }

    [Fact]
    public void Before_the_mirror_nothing_runs_to_tell_and_after_the_pivot_the_mirror_is_gone()
    {
        var saga = new SagaDriver().Begin();
        saga.Send(new SetMigrationSpeed(saga.Id, 5_000));
        Assert.Empty(MigrationActions.SpeedChanges(saga.State)); // CloneImageStructure in flight: no copy or mirror yet
        saga.Succeed(); // CloneImageStructure
        saga.Succeed(); // StartReplication
        saga.Succeed(); // SyncInternalVolumes
        saga.Succeed(); // WaitMirrorReady
        saga.Succeed(); // Pivot
        Assert.Equal(MigrationStep.MarkDestinationLeafLegal, saga.InFlight().Step);
        Assert.Empty(MigrationActions.SpeedChanges(saga.State));
    }

    [Fact]
    public void A_finished_migration_refuses_a_speed_change()
    {
        var saga = new SagaDriver().Begin();
        saga.SucceedAll(saga.Image);
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
        var refused = saga.Send(new SetMigrationSpeed(saga.Id, 1_000_000));
        Assert.True(refused.Refused);
        Assert.Equal(MigrationErrorCodes.MigrationFinished, refused.RefusalCode);
    }
}
