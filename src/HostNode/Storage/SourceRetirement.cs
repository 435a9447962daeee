using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>
/// The last step of a move, in one place for every caller (the SPM's DeleteSourceImage, <c>DiskMover</c>):
/// the source image is deleted only when the destination holds a complete, LEGAL copy that this migration made,
/// and (checked by the domain's delete itself) no process has a source volume open. DESIGN §7 invariant 5.
/// Decided from the domains' metadata alone, so a repeated or stale command gets the same answer as the first.
/// </summary>
public static class SourceRetirement
{
    /// <summary>Deletes the image from <paramref name="source"/>, or refuses (CONFLICT, or VOLUME_IN_USE which is transient) and changes nothing.</summary>
    public static async Task<string> DeleteSourceImageAsync(IStorageDomain source, IStorageDomain destination, ImageId image,
        MigrationId migration, CancellationToken ct = default)
    {
        await RequireCompleteCopyAsync(source, destination, image, migration, ct);
        if (!(await source.ListImagesAsync(ct)).Contains(image))
        {
            await source.MarkMigrationAsync(migration, image, MigrationMark.Retired, ct); // a delete cut short before its mark
            return $"image {image} is no longer on domain {source.Id}; its copy on domain {destination.Id} is complete";
        }
        // Deleted here once already: the image came back since (another migration moved the disk here again, and kept
        // this one's copy as its source), so it is that migration's chain now, whatever this late command finds.
        if (await source.HasMigrationMarkAsync(migration, image, MigrationMark.Retired, ct))
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"migration {migration} deleted image {image} from domain {source.Id} already; the image there now came back with another " +
                "migration: this late delete changes nothing");
        await source.DeleteImageAsync(image, ct);
        // After the delete (a rename, finished by the next SPM if cut short): a retry finds the image gone and marks then.
        await source.MarkMigrationAsync(migration, image, MigrationMark.Retired, ct);
        return $"image {image} deleted from domain {source.Id}";
    }

    /// <summary>
    /// The destination's image is one chain, every volume LEGAL, lying wholly on the destination (no parent left on
    /// the source or elsewhere), and each of the source's volumes has its twin in that chain, made by
    /// <paramref name="migration"/>. A source already deleted is checked against the destination alone.
    /// </summary>
    public static async Task RequireCompleteCopyAsync(IStorageDomain source, IStorageDomain destination, ImageId image,
        MigrationId migration, CancellationToken ct = default)
    {
        ImageInfo copy;
        try
        {
            copy = await destination.DescribeImageAsync(image, ct);
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.ImageNotFound)
        {
            throw Refused(image, source, destination, $"domain {destination.Id} holds no copy of it");
        }
        // The chain the destination's leaf opens: it must be every volume there, ending in a base on the destination.
        var byId = copy.Volumes.ToDictionary(v => v.Id);
        var chain = new HashSet<VolumeId>();
        for (var current = copy.Leaf; ;)
        {
            if (!chain.Add(current.Id))
                throw Refused(image, source, destination, $"the chain on domain {destination.Id} loops at volume {current.Id}");
            if (current.Legality != Legality.Legal)
                throw Refused(image, source, destination, $"volume {current.Id} on domain {destination.Id} is ILLEGAL (not complete and verified)");
            if (current.Parent is not { } parent) break;
            if (parent.Domain != destination.Id || !byId.TryGetValue(parent.Volume, out var next))
                throw Refused(image, source, destination,
                    $"volume {current.Id} on domain {destination.Id} still lies over {parent}, which is not on domain {destination.Id}");
            current = next;
        }
        if (copy.Volumes.FirstOrDefault(v => !chain.Contains(v.Id)) is { } stray)
            throw Refused(image, source, destination, $"volume {stray.Id} on domain {destination.Id} is not on its leaf's chain");

        IReadOnlyList<VolumeInfo> originals;
        try
        {
            originals = (await source.DescribeImageAsync(image, ct)).Volumes;
        }
        catch (OperationFailedException e) when (e.Code == ErrorCodes.ImageNotFound)
        {
            originals = [];
        }
        // Gone already (a repeat): the copy's base is still the one this migration made.
        if (originals.Count == 0)
            originals = copy.Volumes.Where(v => v.Parent is null).ToList();
        foreach (var original in originals)
        {
            if (!byId.TryGetValue(original.Id, out var twin))
                throw Refused(image, source, destination, $"source volume {original.Id} has no copy on domain {destination.Id}");
            if (twin.Owner?.Migration != migration)
                throw Refused(image, source, destination,
                    $"the copy of volume {original.Id} on domain {destination.Id} was made by {twin.Owner?.ToString() ?? "nobody (an operator)"}, " +
                    $"not by migration {migration}");
        }
    }

    private static OperationFailedException Refused(ImageId image, IStorageDomain source, IStorageDomain destination, string why) =>
        new(ErrorCodes.Conflict,
            $"image {image} is not deleted from domain {source.Id}: its copy on domain {destination.Id} is not complete and LEGAL ({why})");
}
