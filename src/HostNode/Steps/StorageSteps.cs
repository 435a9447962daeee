using LiveMigration.HostNode.Concurrency;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// The storage side of every step (DESIGN §3): what the SPM actor runs for the saga and <c>DiskMover</c> runs on one
/// host, in this one place. Whether a step already happened, and whether it may happen, is read from the domains'
/// metadata (the volumes' owner, legality, parents), never from memory (DESIGN §7 invariant 7): a repeated or stale
/// command meets the same checks as a new one. Thread-safe: the SPM runs several disks' steps at once.
/// </summary>
/// <param name="pool">The pool as this caller changes it (the SPM's is fenced by its lease).</param>
/// <param name="fence">The SPM lease (DESIGN §7a), checked before each step, whose generation goes into every volume's
/// owner; null where there is none (generation 0).</param>
/// <param name="maxConcurrentCopies">How many pre-copies copy their internal layers at once; the others wait their turn,
/// their step running and reporting no bytes yet. A post-copy's copy is not counted and never waits (the guest writes on
/// the new leaf meanwhile, within the room promised for it). 0: no bound.</param>
public sealed class StorageSteps(StoragePool pool, IStorageFence? fence = null, int maxConcurrentCopies = 0)
{
    /// <summary>Room a post-copy keeps on its destination for the guest's writes on the new leaf while the chain is copied.</summary>
    public const long PostCopyHeadroomBytes = 64L << 20;

    private readonly SpaceReservations _space = new();
    /// <summary>
    /// One per image: whether a disk's copy is kept or undone is decided under it. A late rollback delete and the roll
    /// forward's first storage step, run at once here, each read the other's mark before either wrote its own: the roll
    /// forward answered its copy kept while the delete went on to remove it. Serialized, the one that comes second sees
    /// what the first did (a kept mark refuses the delete; a delete done leaves no switched leaf to keep). Static, like the
    /// file domain's own locks: a step a restarted SPM actor left running (stuck in the kernel past its stop) still holds
    /// it against the new actor's steps.
    /// </summary>
    private static readonly KeyedLocks<ImageId> Deciding = new();
    private readonly SemaphoreSlim? _copySlots = maxConcurrentCopies > 0 ? new SemaphoreSlim(maxConcurrentCopies) : null;

    /// <summary>The steps that run on storage; the others run on the VM's hypervisor (<see cref="DriveSteps"/>).</summary>
    public static bool Runs(MigrationStep step) => step is MigrationStep.CloneImageStructure or MigrationStep.SyncInternalVolumes
        or MigrationStep.MarkDestinationLeafLegal or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes
        or MigrationStep.DeleteSourceImage or MigrationStep.DeleteDestinationImage;

    /// <summary>Runs the step's storage work; a refusal is an <see cref="OperationFailedException"/> whose code says why.</summary>
    /// <param name="progress">The bytes of the step's copies, all layers as one total; called on the copy's thread.</param>
    /// <param name="rate">The speed limit of the step's copies, which the caller may change while they run; null: the command's.</param>
    public async Task<StepOutcome> RunAsync(ExecuteStep command, IProgress<CopyProgress>? progress, CancellationToken ct, CopyRate? rate = null)
    {
        rate ??= new CopyRate(command.SpeedBytesPerSecond);
        var disk = command.Disk;
        var image = disk.Image;
        var step = command.Operation.Step;
        var migration = command.Operation.Migration;
        if (fence is not null) await fence.CheckAsync(ct);
        // Without an SPM lease (DESIGN §7a) there is no fencing generation to carry.
        var owner = new VolumeOwner(migration, fence?.Generation ?? VolumeOwner.Unfenced);
        var src = pool.Get(disk.Source);
        var dst = pool.Get(disk.Destination);
        if (ReadsTheSource(step) && !(await src.ListImagesAsync(ct)).Contains(image))
        {
            // A repeat after the source was retired: only the destination can say whether this step's effect is there.
            await SourceRetirement.RequireCompleteCopyAsync(src, dst, image, migration, ct);
            return new StepOutcome(Detail: $"already done: image {image} is gone from domain {src.Id} and domain {dst.Id} holds " +
                                           $"the complete LEGAL copy migration {migration} made");
        }
        // The first storage step after the drive switched (sent only past the point of no return, which never reverses):
        // from now on the copy is the disk, and a late rollback of this migration (a delete sent before a probe found the
        // switch done) must not remove it. A rollback's delete that met the copy in use (the VM on it) deleted nothing and
        // left its ended mark: with the switched leaf there, that mark is taken back instead of refusing the roll forward.
        // The switched leaf (pre-copy: the pivoted twin; post-copy: the new leaf) made by this migration: a twin keeps its
        // volume's id, so another migration's copy may hold a leaf of that id.
        async Task DecideKeptOrEndedAsync()
        {
            if (!MakesTheCopy(step)) return;
            // Kept only while every volume of the image there is this migration's: a copy another migration took over (one
            // making a split chain whole, cut short mid-takeover with the leaf still this one's) stays ended for this one.
            var keeps = step is MigrationStep.MarkDestinationLeafLegal or MigrationStep.CloneInternalVolumes
                        && (await PlannedLeaves.FindDestinationLeafAsync(disk, command.Strategy, dst, ct))?.Owner?.Migration == migration
                        && (await dst.DescribeImageAsync(image, ct)).Volumes.All(v => v.Owner?.Migration == migration);
            if (await dst.HasMigrationMarkAsync(migration, image, MigrationMark.Ended, ct))
            {
                if (!keeps)
                    throw new OperationFailedException(ErrorCodes.MigrationEnded,
                        $"migration {migration} ended on domain {dst.Id} with its copy undone: this late {step} changes nothing");
                await dst.UnmarkMigrationAsync(migration, image, MigrationMark.Ended, ct);
            }
            if (keeps)
                await dst.MarkMigrationAsync(migration, image, MigrationMark.Kept, ct);
        }
        async Task<StepOutcome> WorkAsync() => step switch
        {
            MigrationStep.CloneImageStructure => await CloneImageStructureAsync(src, dst, image, owner, ct),
            MigrationStep.SyncInternalVolumes => await SyncInternalVolumesAsync(src, dst, disk, migration, progress, rate, ct),
            MigrationStep.MarkDestinationLeafLegal => await MarkDestinationLeafLegalAsync(dst, disk, migration, ct),
            MigrationStep.CreateVolumeCrossDomain => await CreateVolumeCrossDomainAsync(src, dst, disk, owner, ct),
            MigrationStep.CloneInternalVolumes => await CloneInternalVolumesAsync(src, dst, disk, owner, progress, rate, ct),
            MigrationStep.DeleteSourceImage => await DeleteSourceImageAsync(src, dst, image, migration, ct),
            MigrationStep.DeleteDestinationImage => await DeleteDestinationImageAsync(dst, image, owner, ct),
            _ => throw new OperationFailedException(ErrorCodes.InvalidArgument, $"storage does not run {step}"),
        };
        // The short steps that make or undo the copy run whole under the image's gate, so a late one never makes volumes
        // after a rollback's delete marked the copy ended and removed it; the long copies hold it only while deciding
        // (they write into twins made before, and a delete waiting for a copy of hours would hold the rollback).
        if (step is MigrationStep.CloneImageStructure or MigrationStep.MarkDestinationLeafLegal or MigrationStep.CreateVolumeCrossDomain
            or MigrationStep.DeleteDestinationImage)
            return await DecidingAsync(image, async () =>
            {
                await DecideKeptOrEndedAsync();
                return await WorkAsync();
            }, ct);
        if (MakesTheCopy(step))
            await DecidingAsync(image, async () =>
            {
                await DecideKeptOrEndedAsync();
                return true;
            }, ct);
        return await WorkAsync();
    }

    private async Task<StepOutcome> CloneImageStructureAsync(IStorageDomain src, IStorageDomain dst, ImageId image, VolumeOwner owner,
        CancellationToken ct)
    {
        await ReserveRoomAsync(src, dst, image, owner.Migration, headroom: 0, ct);
        var clone = await dst.CloneImageStructureAsync(src, image, owner, ct);
        return new StepOutcome(Detail: $"{clone.Volumes.Count} volumes cloned ILLEGAL on domain {dst.Id}");
    }

    private async Task<StepOutcome> SyncInternalVolumesAsync(IStorageDomain src, IStorageDomain dst, DiskPlan disk,
        MigrationId migration, IProgress<CopyProgress>? progress, CopyRate rate, CancellationToken ct)
    {
        // The leaf is the mirror's; the internal layers are read-only in QEMU, so they are copied here.
        var image = disk.Image;
        var sourceChain = await src.DescribeImageAsync(image, ct);
        var sourceLeaf = await PlannedLeaves.SourceLeafAsync(disk, src, ct);
        var clone = await dst.DescribeImageAsync(image, ct);
        RequireOwnedBy(clone.Volumes, migration, dst, image);
        var internals = sourceChain.Volumes.Where(v => v.Id != sourceLeaf).Select(v => v.Id).ToList();
        var (copied, waited) = await CopyLayersAsync(src, dst, image, internals, progress, rate, bounded: true, ct);
        return new StepOutcome(copied, $"{internals.Count} internal volumes copied{Waited(waited)}");
    }

    private async Task<StepOutcome> MarkDestinationLeafLegalAsync(IStorageDomain dst, DiskPlan disk, MigrationId migration, CancellationToken ct)
    {
        // The twin of the source leaf, which the mirror wrote and the drive now runs on.
        var leaf = await PlannedLeaves.DestinationLeafAsync(disk, MigrationStrategy.PreCopy, dst, ct);
        RequireOwnedBy([leaf], migration, dst, disk.Image);
        await dst.MarkLegalAsync(disk.Image, leaf.Id, ct);
        _space.Release(migration, disk.Image); // the mirror is done and pivoted: the domain's own figures count it now
        return new StepOutcome(Detail: $"leaf {leaf.Id} on domain {dst.Id} is LEGAL");
    }

    private async Task<StepOutcome> CreateVolumeCrossDomainAsync(IStorageDomain src, IStorageDomain dst, DiskPlan disk, VolumeOwner owner,
        CancellationToken ct)
    {
        var image = disk.Image;
        if (disk.MakesWhole)
            return await AdoptSplitChainAsync(src, dst, disk, owner, ct);
        if ((await dst.ListImagesAsync(ct)).Contains(image)
            && (await dst.DescribeImageAsync(image, ct)).Volumes.FirstOrDefault(v => v.Id == disk.NewLeaf) is { } made)
        {
            // Made already; CloneInternalVolumes may have re-pointed it since, so its parent is not compared.
            RequireOwnedBy([made], owner.Migration, dst, image);
            return new StepOutcome(Detail: $"leaf {made.Id} on domain {dst.Id} was made already, over {made.Parent}");
        }
        // The last step before the live snapshot moves the guest's writes: room for the chain's copy, and for
        // the guest's writes on the new leaf meanwhile, is checked fresh and promised now.
        await ReserveRoomAsync(src, dst, image, owner.Migration, PostCopyHeadroomBytes, ct);
        var oldLeaf = await src.DescribeVolumeAsync(image, await PlannedLeaves.SourceLeafAsync(disk, src, ct), ct);
        var newLeaf = await dst.CreateVolumeAsync(new NewVolume(image, disk.NewLeaf, VolumeFormat.Cow, oldLeaf.Capacity,
            new VolumeRef(src.Id, oldLeaf.Id), Legality.Legal, owner), src, ct);
        return new StepOutcome(Detail: $"leaf {newLeaf.Id} on domain {dst.Id} over {oldLeaf.Id} on domain {src.Id}");
    }

    /// <summary>
    /// The first step of a move that makes a split chain whole (<see cref="DiskPlan.MakesWhole"/>): the drive writes on the
    /// leaf an abandoned post-copy made here, over older layers on the source (or, its clone done, already re-pointed at its
    /// twins here). This migration takes over every volume of the image here that earlier migrations made (the abandoned one,
    /// and an abandoned earlier attempt of this same repair that took over only some), so that from now on the post-copy's own
    /// steps and checks hold: the live snapshot finds the drive on its leaf, the clone copies what the twins lack, the backing
    /// switch and the source's delete follow. Each earlier owner's copy is marked ended here first, so a late command of it
    /// changes nothing any more (DESIGN §7.7). Refused, changing nothing, when the leaf is not such a leaf, or when a volume of
    /// the image here is an operator's or neither the leaf nor a twin of a source volume.
    /// </summary>
    private async Task<StepOutcome> AdoptSplitChainAsync(IStorageDomain src, IStorageDomain dst, DiskPlan disk, VolumeOwner owner,
        CancellationToken ct)
    {
        var image = disk.Image;
        var here = (await dst.ListImagesAsync(ct)).Contains(image) ? (await dst.DescribeImageAsync(image, ct)).Volumes : [];
        if (here.FirstOrDefault(v => v.Id == disk.NewLeaf) is not { } leaf)
            throw new OperationFailedException(ErrorCodes.VolumeNotFound,
                $"domain {dst.Id} holds no leaf {disk.NewLeaf} of image {image}: there is no split chain of it to make whole");
        if (leaf.Legality != Legality.Legal || leaf.Parent is not { } parent || (parent.Domain != src.Id && parent.Domain != dst.Id))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"leaf {leaf.Id} of image {image} on domain {dst.Id} is {leaf.Legality} over {leaf.Parent?.ToString() ?? "nothing"}: " +
                $"not the LEGAL leaf of a chain whose older layers are on domain {src.Id}");
        var sources = (await src.DescribeImageAsync(image, ct)).Volumes;
        var others = here.Where(v => v.Owner?.Migration != owner.Migration).ToList();
        if (others.FirstOrDefault(v => v.Owner is null) is { } operators)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"volume {operators.Id} of image {image} on domain {dst.Id} was made by an operator, not by a migration: nothing is taken over");
        if (others.FirstOrDefault(v => v.Id != leaf.Id && sources.All(s => s.Id != v.Id)) is { } stray)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"volume {stray.Id} of image {image} on domain {dst.Id} ({stray.Owner}) is neither the leaf nor a copy of a volume on domain {src.Id}: " +
                "nothing is taken over");
        var previous = others.Select(v => v.Owner!.Migration).Distinct().ToList();
        if (previous.Count == 0)
            return new StepOutcome(Detail: $"leaf {leaf.Id} on domain {dst.Id} and its {here.Count - 1} other volumes there were taken over already");
        // Room for the copies still to make (a LEGAL twin is complete), and for the guest's writes on the leaf meanwhile,
        // checked fresh and promised before anything changes.
        var missing = sources.Where(s => here.All(v => v.Id != s.Id || v.Legality != Legality.Legal)).Sum(s => s.AllocatedBytes);
        foreach (var earlier in previous) _space.Release(earlier, image); // what the earlier owners were promised is this one's now
        _space.Reserve(await dst.DescribeAsync(ct), owner.Migration, image, missing + PostCopyHeadroomBytes, DateTimeOffset.UtcNow);
        var adopted = 0;
        foreach (var earlier in previous)
        {
            await dst.MarkMigrationAsync(earlier, image, MigrationMark.Ended, ct);
            adopted += (await dst.AdoptVolumesAsync(image, earlier, owner, ct)).Count;
        }
        return new StepOutcome(Detail: $"{adopted} volumes of image {image} on domain {dst.Id} (leaf {leaf.Id} over {parent}, and copies of older " +
                                       $"layers) taken over from migration {string.Join(", ", previous)}, which left the chain over domains {src.Id} and {dst.Id}");
    }

    private async Task<StepOutcome> CloneInternalVolumesAsync(IStorageDomain src, IStorageDomain dst, DiskPlan disk, VolumeOwner owner,
        IProgress<CopyProgress>? progress, CopyRate rate, CancellationToken ct)
    {
        var image = disk.Image;
        var oldChain = await src.DescribeImageAsync(image, ct);
        var oldLeaf = await PlannedLeaves.SourceLeafAsync(disk, src, ct);
        // Twins of the old chain under the new leaf, empty and ILLEGAL until copied and verified.
        await dst.CloneImageStructureAsync(src, image, owner, ct);
        // Not bounded: the guest writes on the new leaf meanwhile within the room promised for it, so this copy never waits.
        var (copied, waited) = await CopyLayersAsync(src, dst, image, oldChain.Volumes.Select(v => v.Id).ToList(), progress, rate, bounded: false, ct);
        RequireOwnedBy([await dst.DescribeVolumeAsync(image, disk.NewLeaf, ct)], owner.Migration, dst, image);
        // Metadata only: the running QEMU owns the leaf and rewrites its header in SwitchBackingChain.
        await dst.SetParentAsync(image, disk.NewLeaf, new VolumeRef(dst.Id, oldLeaf), null, rewriteHeader: false, ct);
        _space.Release(owner.Migration, image); // copied: the domain's own figures count it now
        return new StepOutcome(copied, $"{oldChain.Volumes.Count} volumes copied{Waited(waited)}; leaf {disk.NewLeaf} now over {oldLeaf} on domain {dst.Id}");
    }

    private async Task<StepOutcome> DeleteSourceImageAsync(IStorageDomain src, IStorageDomain dst, ImageId image, MigrationId migration,
        CancellationToken ct)
    {
        _space.Release(migration, image);
        return new StepOutcome(Detail: await SourceRetirement.DeleteSourceImageAsync(src, dst, image, migration, ct));
    }

    private async Task<StepOutcome> DeleteDestinationImageAsync(IStorageDomain dst, ImageId image, VolumeOwner owner, CancellationToken ct)
    {
        if (await dst.HasMigrationMarkAsync(owner.Migration, image, MigrationMark.Kept, ct))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"the copy migration {owner.Migration} made of image {image} on domain {dst.Id} is the disk's chain now (its drive switched there " +
                "and the migration went on): a late rollback deletes nothing of it");
        _space.Release(owner.Migration, image);
        // The mark first, so no late command of this migration makes its volumes again; a full domain that
        // cannot take the mark gets it right after the delete freed room.
        var marked = true;
        try
        {
            await dst.MarkMigrationAsync(owner.Migration, image, MigrationMark.Ended, ct);
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.IoError)
        {
            marked = false;
        }
        // Refused VOLUME_IN_USE (nothing deleted: the VM may run on the copy, a late switch having landed), the mark stays
        // and refuses late commands; a roll forward the saga's probe then leads to takes it back (RunAsync).
        var removed = await dst.DeleteOwnedVolumesAsync(image, owner, ct);
        if (!marked) await dst.MarkMigrationAsync(owner.Migration, image, MigrationMark.Ended, ct);
        return new StepOutcome(Detail: $"{removed.Count} volumes of image {image} that migration {owner.Migration} made deleted from domain {dst.Id}");
    }

    private static async Task<T> DecidingAsync<T>(ImageId image, Func<Task<T>> decide, CancellationToken ct)
    {
        using (await Deciding.LockAsync(image, ct))
            return await decide();
    }

    /// <summary>What the disk's copy takes on the destination (the source chain's allocated bytes, and the headroom), checked fresh and promised.</summary>
    private async Task ReserveRoomAsync(IStorageDomain src, IStorageDomain dst, ImageId image, MigrationId migration, long headroom, CancellationToken ct)
    {
        var needed = (await src.DescribeImageAsync(image, ct)).Volumes.Sum(v => v.AllocatedBytes) + headroom;
        _space.Reserve(await dst.DescribeAsync(ct), migration, image, needed, DateTimeOffset.UtcNow);
    }

    /// <summary>The steps that make or fill the destination copy: refused once the migration's rollback undid it there.</summary>
    private static bool MakesTheCopy(MigrationStep step) => step is MigrationStep.CloneImageStructure or MigrationStep.SyncInternalVolumes
        or MigrationStep.MarkDestinationLeafLegal or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes;

    private static bool ReadsTheSource(MigrationStep step) => step is MigrationStep.CloneImageStructure
        or MigrationStep.SyncInternalVolumes or MigrationStep.CreateVolumeCrossDomain or MigrationStep.CloneInternalVolumes;

    /// <summary>A step works only on volumes its migration made: a stale command meeting another migration's volumes changes nothing.</summary>
    private static void RequireOwnedBy(IEnumerable<VolumeInfo> volumes, MigrationId migration, IStorageDomain domain, ImageId image)
    {
        if (volumes.FirstOrDefault(v => v.Owner?.Migration != migration) is { } foreign)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"volume {foreign.Id} of image {image} on domain {domain.Id} was made by {foreign.Owner?.ToString() ?? "nobody (an operator)"}, " +
                $"not by migration {migration}: this step does not touch it");
    }

    /// <summary>
    /// Copies the layers in order, each verified before it is LEGAL, reporting the bytes of all of them as one total; returns the bytes copied and how long it waited for
    /// a copy slot (<paramref name="bounded"/>: a pre-copy's internal layers, which wait while the slots are taken).
    /// </summary>
    private async Task<(long Copied, TimeSpan Waited)> CopyLayersAsync(IStorageDomain src, IStorageDomain dst, ImageId image,
        IReadOnlyList<VolumeId> layers, IProgress<CopyProgress>? progress, CopyRate rate, bool bounded, CancellationToken ct)
    {
        var sizes = new List<long>();
        foreach (var id in layers) sizes.Add((await src.DescribeVolumeAsync(image, id, ct)).AllocatedBytes);
        var total = sizes.Sum();
        long done = 0;
        // Progress counts each layer in its source's bytes, as the domain reports a layer's copy: a twin that ends smaller
        // (zeroes the copy left as holes) must not move the step's progress back at the next layer.
        long reported = 0;
        // Before the wait: the saga hears the size at once, and a repeated command attaches to a step it can see.
        progress?.Report(new CopyProgress(0, total));
        var slots = bounded ? _copySlots : null;
        var waited = await TakeCopySlotAsync(slots, () => progress?.Report(new CopyProgress(0, total)), ct);
        try
        {
            for (var i = 0; i < layers.Count; i++)
            {
                var before = reported;
                var copied = await dst.CopyVolumeDataAsync(src, image, layers[i],
                    progress is null ? null : new InlineProgress<CopyProgress>(p => progress.Report(new CopyProgress(before + p.Done, Math.Max(total, before + p.Total)))),
                    ct, rate);
                done += copied.AllocatedBytes;
                reported += sizes[i];
                progress?.Report(new CopyProgress(reported, Math.Max(total, reported)));
            }
        }
        finally
        {
            slots?.Release();
        }
        return (done, waited);
    }

    /// <summary>
    /// How often a copy waiting for its slot says it still waits (its progress, 0 bytes): within the saga's step deadline
    /// (10 s), so the saga neither sends the step again nor warns that it heard nothing.
    /// </summary>
    public static readonly TimeSpan StillWaitingInterval = TimeSpan.FromSeconds(4);

    private static async Task<TimeSpan> TakeCopySlotAsync(SemaphoreSlim? slots, Action stillWaiting, CancellationToken ct)
    {
        if (slots is null || slots.Wait(0)) return TimeSpan.Zero;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (!await slots.WaitAsync(StillWaitingInterval, ct)) stillWaiting();
        return watch.Elapsed;
    }

    private static string Waited(TimeSpan waited) =>
        waited >= TimeSpan.FromMilliseconds(100) ? $" after waiting {waited.TotalSeconds:0.0} s for a copy slot" : "";
}

/// <summary>Calls back inline: <see cref="Progress{T}"/> would post to a captured context that an actor task does not have.</summary>
public sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
