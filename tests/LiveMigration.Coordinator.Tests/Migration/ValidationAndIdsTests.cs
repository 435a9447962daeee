using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Tests.Migration;

public sealed class ValidationAndIdsTests
{
    private static void AssertRefused(SagaDriver saga, MigrationRequest request, ValidationFacts facts, string code, string mention)
    {
        var decision = saga.Send(new StartMigration(saga.Id, request, facts));
        Assert.Equal(code, decision.RefusalCode);
        Assert.Contains(mention, decision.RefusalMessage);
        Assert.Empty(decision.Events);
        Assert.IsType<MigrationStatus.New>(saga.State.Status);
    }

    [Fact]
    public void Start_is_refused_with_a_clear_error_and_nothing_changed()
    {
        var saga = new SagaDriver();
        var facts = saga.Facts();
        AssertRefused(saga, saga.Request(), facts with { Vm = null }, ErrorCodes.VmNotFound, saga.Vm.ToString());
        AssertRefused(saga, saga.Request(), saga.Facts(running: false), ErrorCodes.VmNotRunning, saga.Vm.ToString());
        AssertRefused(saga, saga.Request() with { Disks = [new DiskMoveRequest(ImageId.New(), saga.Destination)] }, facts, ErrorCodes.ImageNotFound, "has no disk");
        AssertRefused(saga, saga.Request() with { Disks = [new DiskMoveRequest(saga.Image, saga.Source)] }, facts, ErrorCodes.InvalidArgument, "already on domain");
        var unknown = DomainId.New();
        AssertRefused(saga, saga.Request() with { Disks = [new DiskMoveRequest(saga.Image, unknown)] }, facts, ErrorCodes.DomainNotFound, unknown.ToString());
        AssertRefused(saga, saga.Request(), facts with { Domains = [new DomainFacts(saga.Destination, false, 1L << 40)] }, MigrationErrorCodes.DomainInactive, saga.Destination.ToString());
        AssertRefused(saga, saga.Request(), facts with { Domains = [new DomainFacts(saga.Destination, false, 1L << 40, ["host-2"])] }, MigrationErrorCodes.DomainInactive, "not reachable from host-2");
        AssertRefused(saga, saga.Request(), saga.Facts(free: 1000), ErrorCodes.NotEnoughSpace, "1000 bytes free");
        // found by hand: after an abandoned post-copy no move of the disk worked (refused, or failed and rolled back)
        var split = facts with { Vm = facts.Vm! with { Disks = [facts.Vm.Disks[0] with { OtherDomains = [saga.Destination] }] } };
        AssertRefused(saga, saga.Request(), split, MigrationErrorCodes.ChainSpansDomains, "--strategy post-copy");
        AssertRefused(saga, saga.Request(), facts with { DisksInActiveMigrations = [saga.Image] }, MigrationErrorCodes.DiskBusy, saga.Image.ToString());
        AssertRefused(saga, saga.Request(parallel: 0), facts, ErrorCodes.InvalidArgument, "parallel");
        Assert.Empty(saga.Journal);
    }

    /// <summary>The refusals name a domain as an operator knows it (and types it), beside its id.</summary>
    [Fact]
    public void A_refusal_names_the_domains_by_their_names_and_the_move_it_suggests_by_the_name_to_type()
    {
        var saga = new SagaDriver();
        var facts = saga.Facts();
        var named = facts with
        {
            Domains = [.. facts.Domains.Select(d => d with { Name = d.Id == saga.Source ? "domain-a" : d.Id == saga.Destination ? "domain-b" : null })],
        };
        AssertRefused(saga, saga.Request() with { Disks = [new DiskMoveRequest(saga.Image, saga.Source)] }, named, ErrorCodes.InvalidArgument,
            $"already on domain domain-a ({saga.Source})");
        AssertRefused(saga, saga.Request(), named with { Domains = [.. named.Domains.Select(d => d with { FreeBytes = 1000 })] }, ErrorCodes.NotEnoughSpace,
            $"destination domain domain-b ({saga.Destination}) has 1000 bytes free");
        AssertRefused(saga, saga.Request(), named with { Domains = [.. named.Domains.Select(d => d with { Active = d.Id != saga.Destination })] },
            MigrationErrorCodes.DomainInactive, $"destination domain domain-b ({saga.Destination})");
        var split = named with { Vm = named.Vm! with { Disks = [named.Vm.Disks[0] with { Domain = saga.Destination, Leaf = VolumeId.New(), OtherDomains = [saga.Source] }] } };
        AssertRefused(saga, saga.Request(MigrationStrategy.PreCopy), split, MigrationErrorCodes.ChainSpansDomains,
            $"leaf is on domain domain-b ({saga.Destination}) and whose older layers are on domain-a ({saga.Source})");
        AssertRefused(saga, saga.Request(MigrationStrategy.PreCopy), split, MigrationErrorCodes.ChainSpansDomains,
            $"`lsm migrate VM --to domain-b --disk {saga.Image} --strategy post-copy`");
        Assert.Empty(saga.Journal);
    }

    /// <summary>A disk whose leaf is on the destination and whose older layers are on the source: an abandoned post-copy's.</summary>
    private static ValidationFacts SplitOnto(SagaDriver saga, VolumeId leaf, params DomainId[] others)
    {
        var facts = saga.Facts();
        return facts with { Vm = facts.Vm! with { Disks = [facts.Vm.Disks[0] with { Domain = saga.Destination, Leaf = leaf, OtherDomains = others.ToValueList() }] } };
    }

    [Fact]
    public void A_chain_over_two_domains_moves_only_by_a_post_copy_to_its_leafs_domain_which_runs_that_post_copys_tail()
    {
        var leaf = VolumeId.New();
        var saga = new SagaDriver();
        var split = SplitOnto(saga, leaf, saga.Source);
        var third = DomainId.New();
        var toThird = saga.Request(MigrationStrategy.PostCopy) with { Disks = [new DiskMoveRequest(saga.Image, third)] };
        AssertRefused(saga, toThird, split with { Domains = [.. split.Domains, new DomainFacts(third, true, 1L << 40)] },
            MigrationErrorCodes.ChainSpansDomains, $"--to {saga.Destination} --disk {saga.Image} --strategy post-copy");
        AssertRefused(saga, saga.Request(MigrationStrategy.PreCopy), split, MigrationErrorCodes.ChainSpansDomains, "--strategy post-copy");
        AssertRefused(saga, saga.Request(MigrationStrategy.PostCopy), SplitOnto(saga, leaf, saga.Source, third),
            MigrationErrorCodes.ChainSpansDomains, "more than two domains");

        var started = saga.Send(new StartMigration(saga.Id, saga.Request(MigrationStrategy.PostCopy), split));

        Assert.False(started.Refused);
        var plan = Assert.Single(Assert.IsType<MigrationRequested>(Assert.Single(started.Events)).Disks);
        Assert.Equal(new DiskPlan(saga.Image, saga.Source, saga.Destination, 1L << 30, leaf, MakesWhole: true), plan);
        // The guest writes on the leaf already: nothing of this disk may be undone, so a cancel is refused once it started.
        Assert.True(saga.State.Disk(saga.Image).PassedPointOfNoReturn);
        saga.Send(new AdmitMigration(saga.Id));
        Assert.Equal(MigrationStep.CreateVolumeCrossDomain, saga.InFlight().Step);
        Assert.Equal(MigrationErrorCodes.PointOfNoReturnPassed, saga.Send(new CancelMigration(saga.Id)).RefusalCode);
        // A failed (confirming) live snapshot is not probed and never rolled back: it is tried again, then waits for the operator.
        saga.Succeed();
        for (var attempt = 1; attempt <= 3; attempt++)
        {
            Assert.Equal(MigrationStep.LiveSnapshotToDestination, saga.InFlight().Step);
            saga.Fail(ErrorCodes.Conflict);
            saga.Advance(TimeSpan.FromMinutes(1));
            saga.Send(new RetryDue(saga.Id));
        }
        Assert.Equal(MigrationStep.LiveSnapshotToDestination, saga.Journal.OfType<MigrationSuspended>().Single().Step);
        Assert.DoesNotContain(saga.Journal.OfType<StepStarted>(), s => s.Step is MigrationStep.ProbeSwitch or MigrationStep.DeleteDestinationImage);
        Assert.Null(saga.State.Termination);
        saga.Send(new ResumeMigration(saga.Id));
        Assert.Equal([MigrationStep.LiveSnapshotToDestination, MigrationStep.CloneInternalVolumes, MigrationStep.SwitchBackingChain,
            MigrationStep.DeleteSourceImage], saga.SucceedAll(saga.Image));
        Assert.IsType<MigrationStatus.Completed>(saga.State.Status);
    }

    [Fact]
    public void A_split_disk_that_has_not_started_is_skipped_when_its_migration_is_cancelled_or_fails_and_a_queued_one_is_cancelled()
    {
        // queued: nothing started, so nothing is past its point of no return yet
        var queued = new SagaDriver();
        Assert.False(queued.Send(new StartMigration(queued.Id, queued.Request(MigrationStrategy.PostCopy), SplitOnto(queued, VolumeId.New(), queued.Source))).Refused);
        Assert.False(queued.Send(new CancelMigration(queued.Id)).Refused);
        Assert.IsType<MigrationStatus.Cancelled>(queued.State.Status);

        // a normal disk and a split one, one at a time: the normal one fails before its switch
        foreach (var end in new[] { "cancel", "failure" })
        {
            var saga = new SagaDriver(disks: 2);
            var facts = saga.Facts();
            var split = facts with { Vm = facts.Vm! with { Disks = [facts.Vm.Disks[0], facts.Vm.Disks[1] with { Domain = saga.Destination, Leaf = VolumeId.New(), OtherDomains = [saga.Source] }] } };
            Assert.False(saga.Send(new StartMigration(saga.Id, saga.Request(MigrationStrategy.PostCopy, parallel: 1), split)).Refused);
            saga.Send(new AdmitMigration(saga.Id));
            Assert.Equal(MigrationStep.CreateVolumeCrossDomain, saga.InFlight(saga.Images[0]).Step);
            if (end == "cancel")
            {
                Assert.False(saga.Send(new CancelMigration(saga.Id)).Refused, end);
                saga.Fail(saga.Images[0], ErrorCodes.StepStopped);
            }
            else
                saga.Fail(saga.Images[0], ErrorCodes.Conflict);
            saga.SucceedAll(saga.Images[0]); // its rollback
            Assert.True(saga.State.Status.IsFinished, $"{end}: {saga.State.Status}");
            Assert.Equal(DiskPhase.Skipped, saga.State.Disk(saga.Images[1]).Phase);
            Assert.DoesNotContain(saga.Journal.OfType<StepStarted>(), s => s.Image == saga.Images[1]);
        }
    }

    [Fact]
    public void A_repeated_start_is_a_no_op_and_a_different_one_is_refused()
    {
        var saga = new SagaDriver();
        saga.Send(new StartMigration(saga.Id, saga.Request(), saga.Facts()));
        Assert.Empty(saga.Send(new StartMigration(saga.Id, saga.Request(), saga.Facts())).Events);
        Assert.Equal(MigrationErrorCodes.MigrationExists,
            saga.Send(new StartMigration(saga.Id, saga.Request(MigrationStrategy.PostCopy), saga.Facts())).RefusalCode);
        Assert.Equal(MigrationErrorCodes.MigrationNotFound,
            MigrationDecider.Decide(MigrationState.Initial(saga.Id), new CancelMigration(saga.Id), SagaDriver.T0).RefusalCode);
    }

    [Fact]
    public void Operation_ids_round_trip_and_reject_anything_else()
    {
        var id = new OperationId(MigrationId.New(), MigrationStep.SyncInternalVolumes, ImageId.New(), 3);
        Assert.Equal(id, OperationId.Parse(id.ToString()));
        Assert.StartsWith($"{id.Migration}/SyncInternalVolumes:{id.Image}/3", id.ToString());
        foreach (var bad in new[] { "", "a/b/c", $"{id.Migration}/Nope:{id.Image}/1", $"{id.Migration}/Pivot:{id.Image}/0", $"{id.Migration}/Pivot/1", $"{id.Migration}/99:{id.Image}/1" })
            Assert.False(OperationId.TryParse(bad, out _), bad);
        Assert.Equal(ErrorCodes.InvalidId, Assert.Throws<OperationFailedException>(() => OperationId.Parse("x")).Code);
    }

    [Fact]
    public void The_post_copy_leaf_id_is_the_same_on_every_replay_and_differs_per_disk()
    {
        var migration = MigrationId.New();
        var (a, b) = (ImageId.New(), ImageId.New());
        Assert.Equal(MigrationDecider.NewLeafId(migration, a), MigrationDecider.NewLeafId(migration, a));
        Assert.NotEqual(MigrationDecider.NewLeafId(migration, a), MigrationDecider.NewLeafId(migration, b));
        Assert.True(UuidText.TryParse(MigrationDecider.NewLeafId(migration, a).ToString(), out _));
    }
}
