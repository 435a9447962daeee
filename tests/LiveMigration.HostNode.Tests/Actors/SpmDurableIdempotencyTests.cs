using Akka.Actor;
using LiveMigration.HostNode.Spm;
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
/// DESIGN §7 invariant 7 through the SPM actor: a repeated or stale ExecuteStep (another attempt, sent after
/// later steps or after another migration of the same disk) is decided from the volumes' metadata, never from
/// the actor's in-memory ledger. Each stale command goes to a fresh SPM (no memory of it) and with a new
/// attempt number, so the ledger cannot be what answers.
/// </summary>
public sealed class SpmDurableIdempotencyTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30);
    private readonly StoragePool _pool;
    private readonly VmId _vm = VmId.New();
    private SeededChain _chain = null!;

    public SpmDurableIdempotencyTests() => _pool = new StoragePool([_a, _b]);

    public async Task InitializeAsync() =>
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));

    public Task DisposeAsync() => Task.CompletedTask;

    private IActorRef Spm() => Sys.ActorOf(SpmActor.Props(_pool));

    private StepDriver Migration(IStorageDomain from, IStorageDomain to, MigrationStrategy strategy = MigrationStrategy.PreCopy) =>
        new(_vm, new DiskPlan(_chain.Image, from.Id, to.Id, 10 * MiB, VolumeId.New()), strategy);

    private async Task<IReadOnlyList<(VolumeId, Legality, VolumeOwner?)>> StateOfAsync(IStorageDomain domain) =>
        (await domain.ListImagesAsync()).Contains(_chain.Image)
            ? (await domain.DescribeImageAsync(_chain.Image)).Volumes.Select(v => (v.Id, v.Legality, v.Owner)).ToList()
            : [];

    /// <summary>The storage side of a pre-copy (the mirror's work on the leaf stands in as a seeded leaf), up to the source deleted.</summary>
    private async Task PreCopyStorageAsync(StepDriver migration, IStorageDomain to, IActorRef spm, bool deleteSource = true)
    {
        var saga = CreateTestProbe();
        await migration.SucceedAsync(spm, Step.CloneImageStructure, saga);
        await migration.SucceedAsync(spm, Step.SyncInternalVolumes, saga);
        ((SimStorageDomain)to).SeedAllocated(_chain.Image, _chain.Leaf, ChainSeeder.LayerDataBytes);
        await migration.SucceedAsync(spm, Step.MarkDestinationLeafLegal, saga);
        if (deleteSource) await migration.SucceedAsync(spm, Step.DeleteSourceImage, saga);
    }

    [Fact]
    public async Task A_late_forward_step_of_a_rolled_back_migration_makes_nothing_again_even_on_a_fresh_spm()
    {
        // Simulation bug H1: after a host restart forgot the operation ids, a late copy of an old command came back to life.
        var saga = CreateTestProbe();
        var pre = Migration(_a, _b);
        await pre.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        await pre.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga);
        var late = Assert.IsType<OperationFailed>(await pre.RunAsync(Spm(), Step.CloneImageStructure, saga));
        Assert.Equal(ErrorCodes.MigrationEnded, late.Code);
        Assert.Empty(await StateOfAsync(_b));

        var post = Migration(_a, _b, MigrationStrategy.PostCopy);
        await post.SucceedAsync(Spm(), Step.CreateVolumeCrossDomain, saga);
        await post.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga);
        Assert.Equal(ErrorCodes.MigrationEnded, Assert.IsType<OperationFailed>(await post.RunAsync(Spm(), Step.CreateVolumeCrossDomain, saga)).Code);
        Assert.Equal(ErrorCodes.MigrationEnded, Assert.IsType<OperationFailed>(await post.RunAsync(Spm(), Step.CloneInternalVolumes, saga)).Code);
        Assert.Empty(await StateOfAsync(_b));
    }

    [Fact]
    public async Task A_stale_DeleteDestinationImage_after_another_migration_cloned_the_disk_deletes_none_of_its_volumes()
    {
        var saga = CreateTestProbe();
        var first = Migration(_a, _b);
        await first.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        await first.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga);
        var second = Migration(_a, _b);
        await second.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        await second.SucceedAsync(Spm(), Step.SyncInternalVolumes, saga);
        var before = await StateOfAsync(_b);

        // The first migration's rollback, repeated late by a fresh SPM under a new attempt.
        var late = await first.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga, attempt: 2);

        Assert.Contains("0 volumes", late.Outcome.Detail);
        Assert.Equal(before, await StateOfAsync(_b));
        Assert.All(before, v => Assert.Equal(second.Migration, v.Item3!.Migration));
    }

    [Fact]
    public async Task A_stale_clone_or_sync_of_another_migration_is_refused_and_changes_nothing()
    {
        var saga = CreateTestProbe();
        var first = Migration(_a, _b);
        await first.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        await first.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga);
        var second = Migration(_a, _b);
        await second.SucceedAsync(Spm(), Step.CloneImageStructure, saga);
        var before = await StateOfAsync(_b);

        // The first migration was rolled back on this domain: its late commands find that mark.
        var clone = Assert.IsType<OperationFailed>(await first.RunAsync(Spm(), Step.CloneImageStructure, saga, attempt: 3));
        var sync = Assert.IsType<OperationFailed>(await first.RunAsync(Spm(), Step.SyncInternalVolumes, saga, attempt: 2));
        var markLegal = Assert.IsType<OperationFailed>(await first.RunAsync(Spm(), Step.MarkDestinationLeafLegal, saga, attempt: 2));
        Assert.All(new[] { clone, sync, markLegal }, f => Assert.Equal((ErrorCodes.MigrationEnded, false), (f.Code, f.Transient)));
        // A migration that never ended here meets the second one's volumes: not its own.
        var third = Migration(_a, _b);
        var foreign = Assert.IsType<OperationFailed>(await third.RunAsync(Spm(), Step.SyncInternalVolumes, saga));
        Assert.Equal((ErrorCodes.DestinationHoldsImage, false), (foreign.Code, foreign.Transient));
        Assert.Equal(before, await StateOfAsync(_b));
        Assert.All(await StateOfAsync(_b), v => Assert.Equal(Legality.Illegal, v.Item2));
    }

    [Fact]
    public async Task DeleteSourceImage_waits_for_a_complete_legal_copy_and_for_nobody_to_hold_the_source()
    {
        var saga = CreateTestProbe();
        var migration = Migration(_a, _b);
        await migration.SucceedAsync(Spm(), Step.CloneImageStructure, saga);

        // The copy is not complete: ILLEGAL twins.
        var early = Assert.IsType<OperationFailed>(await migration.RunAsync(Spm(), Step.DeleteSourceImage, saga));
        Assert.Equal((ErrorCodes.Conflict, false), (early.Code, early.Transient));
        Assert.Equal(_chain.Ids, (await StateOfAsync(_a)).Select(v => v.Item1));

        await migration.SucceedAsync(Spm(), Step.SyncInternalVolumes, saga, attempt: 2);
        _b.SeedAllocated(_chain.Image, _chain.Leaf, ChainSeeder.LayerDataBytes);
        await migration.SucceedAsync(Spm(), Step.MarkDestinationLeafLegal, saga, attempt: 2);
        using (_a.HoldOpen(_chain.Image, _chain.Middle))
        {
            var held = Assert.IsType<OperationFailed>(await migration.RunAsync(Spm(), Step.DeleteSourceImage, saga, attempt: 2));
            Assert.Equal((ErrorCodes.VolumeInUse, true), (held.Code, held.Transient));
            Assert.Equal(_chain.Ids, (await StateOfAsync(_a)).Select(v => v.Item1));
        }

        await migration.SucceedAsync(Spm(), Step.DeleteSourceImage, saga, attempt: 3);
        Assert.Empty(await StateOfAsync(_a));
        // Repeated by an SPM that never saw it: the metadata says it is done.
        await migration.SucceedAsync(Spm(), Step.DeleteSourceImage, saga, attempt: 4);
        Assert.Equal(_chain.Ids, (await StateOfAsync(_b)).Select(v => v.Item1));
    }

    [Fact]
    public async Task A_stale_DeleteSourceImage_after_the_disk_moved_back_deletes_nothing()
    {
        var saga = CreateTestProbe();
        var there = Migration(_a, _b);
        await PreCopyStorageAsync(there, _b, Spm());
        var back = Migration(_b, _a);
        await PreCopyStorageAsync(back, _a, Spm());
        Assert.Empty(await StateOfAsync(_b));
        var onA = await StateOfAsync(_a);

        // The first move's last step, repeated late: its "source" A now holds the disk again.
        var stale = Assert.IsType<OperationFailed>(await there.RunAsync(Spm(), Step.DeleteSourceImage, saga, attempt: 2));

        Assert.Equal(ErrorCodes.Conflict, stale.Code);
        Assert.Equal(onA, await StateOfAsync(_a));
        Assert.All(onA, v => Assert.Equal((Legality.Legal, back.Migration), (v.Item2, v.Item3!.Migration)));
    }

    [Fact]
    public async Task Earlier_pre_copy_steps_repeated_after_the_source_was_deleted_answer_from_the_destinations_metadata()
    {
        var saga = CreateTestProbe();
        var migration = Migration(_a, _b);
        await PreCopyStorageAsync(migration, _b, Spm());
        var done = await StateOfAsync(_b);

        foreach (var step in new[] { Step.CloneImageStructure, Step.SyncInternalVolumes, Step.MarkDestinationLeafLegal })
        {
            var again = await migration.SucceedAsync(Spm(), step, saga, attempt: 5);
            Assert.Equal(0, again.Outcome.BytesCopied);
        }
        Assert.Equal(done, await StateOfAsync(_b));
        // Another migration's late steps do not pass for done: the copy is not theirs.
        var stranger = Migration(_a, _b);
        var refused = Assert.IsType<OperationFailed>(await stranger.RunAsync(Spm(), Step.SyncInternalVolumes, saga));
        Assert.Equal(ErrorCodes.Conflict, refused.Code);
        Assert.Equal(done, await StateOfAsync(_b));
    }

    [Fact]
    public async Task Post_copy_steps_repeated_after_later_ones_answer_success_and_change_nothing()
    {
        var saga = CreateTestProbe();
        var migration = Migration(_a, _b, MigrationStrategy.PostCopy);
        await migration.SucceedAsync(Spm(), Step.CreateVolumeCrossDomain, saga);
        await migration.SucceedAsync(Spm(), Step.CloneInternalVolumes, saga);
        var copied = await StateOfAsync(_b);
        Assert.Equal(new VolumeRef(_b.Id, _chain.Leaf), (await _b.DescribeVolumeAsync(_chain.Image, migration.Disk.NewLeaf)).Parent);

        await migration.SucceedAsync(Spm(), Step.CreateVolumeCrossDomain, saga, attempt: 2);
        Assert.Equal(copied, await StateOfAsync(_b));
        await migration.SucceedAsync(Spm(), Step.DeleteSourceImage, saga);
        await migration.SucceedAsync(Spm(), Step.CreateVolumeCrossDomain, saga, attempt: 3);
        await migration.SucceedAsync(Spm(), Step.CloneInternalVolumes, saga, attempt: 2);
        Assert.Equal(copied, await StateOfAsync(_b));
        Assert.Empty(await StateOfAsync(_a));
    }

    [Fact]
    public async Task Moving_a_disk_back_onto_a_domain_that_still_holds_it_is_refused_and_its_rollback_keeps_every_volume()
    {
        // A post-copy left abandoned: the VM's new leaf on B over A's chain; A still holds the whole old chain.
        var saga = CreateTestProbe();
        var postCopy = Migration(_a, _b, MigrationStrategy.PostCopy);
        await postCopy.SucceedAsync(Spm(), Step.CreateVolumeCrossDomain, saga);
        var back = Migration(_b, _a);
        var onA = await StateOfAsync(_a);

        var clone = Assert.IsType<OperationFailed>(await back.RunAsync(Spm(), Step.CloneImageStructure, saga));
        await back.SucceedAsync(Spm(), Step.DeleteDestinationImage, saga);

        Assert.Equal((ErrorCodes.DestinationHoldsImage, false), (clone.Code, clone.Transient));
        Assert.Equal(onA, await StateOfAsync(_a));
        Assert.Equal([postCopy.Disk.NewLeaf], (await StateOfAsync(_b)).Select(v => v.Item1));
    }
}
