using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>A block that does not hold what the ledger says it must.</summary>
/// <param name="Expected">The stamps the block may hold (last acknowledged, and any unacknowledged since).</param>
/// <param name="Found">What it holds: another stamp, a corrupt one, or foreign data.</param>
/// <param name="FoundSequence">The sequence number of the stamp found, when a whole stamp was found.</param>
public sealed record BlockMismatch(long Offset, string Expected, string Found, long? FoundSequence)
{
    public override string ToString() => $"offset {Offset}: expected {Expected}, found {Found}";
}

/// <summary>What a block that is not current means for the guest.</summary>
public enum MismatchKind
{
    /// <summary>The block had a durable write, and neither it nor any later write is there: data loss.</summary>
    Lost,
    /// <summary>The last acknowledged write is not there, but nothing durable is missing: legitimate after a crash, a bug in a running VM.</summary>
    InDoubt,
}

/// <param name="Source">What was read: the NBD export or the image file.</param>
/// <param name="BlocksChecked">Blocks the ledger names, all of them read and checked.</param>
/// <param name="DurableBlocks">Blocks with a durable write (a completed FLUSH after it, or FUA): these must never lose it.</param>
/// <param name="UnacknowledgedBlocks">Blocks with a write sent and never acknowledged (either stamp was accepted).</param>
/// <param name="Lost">Blocks whose newest durable write is gone (and no later write replaced it): data loss.</param>
/// <param name="InDoubt">Blocks that do not hold their last acknowledged write while keeping every durable one: after a crash,
/// the acknowledged writes no FLUSH covered yet; in a VM that kept running, still wrong.</param>
public sealed record VerificationReport(string Source, int BlocksChecked, int DurableBlocks, int UnacknowledgedBlocks,
    IReadOnlyList<BlockMismatch> Lost, IReadOnlyList<BlockMismatch> InDoubt)
{
    /// <summary>Every block that does not hold its last acknowledged write (lost or in doubt), by offset.</summary>
    public IReadOnlyList<BlockMismatch> Mismatches { get; } = Lost.Concat(InDoubt).OrderBy(m => m.Offset).ToList();

    /// <summary>Every acknowledged write found: what a VM that never crashed must show.</summary>
    public bool Ok => Mismatches.Count == 0;

    /// <summary>No durable write lost: what a VM must show after any crash.</summary>
    public bool NoDurableLoss => Lost.Count == 0;

    public override string ToString() =>
        $"{Source}: {BlocksChecked} blocks checked ({DurableBlocks} with a durable write, {UnacknowledgedBlocks} with an unacknowledged one): " +
        (Ok ? "every acknowledged write found"
            : $"{Lost.Count} durable lost, {InDoubt.Count} in doubt (acknowledged, not yet durable, not found); first: {Mismatches[0]}");
}

/// <summary>
/// Proves that nothing the guest wrote was lost. A block that holds its last acknowledged stamp (or a later one sent
/// and never acknowledged) is current. Otherwise it is "in doubt" when it still holds its newest durable write or a
/// later one, since a crash may take back what no FLUSH covered, and "lost" when it does not. Reads through the NBD
/// export while the VM runs, or the image chain offline once it is stopped.
/// </summary>
public static class GuestVerifier
{
    /// <summary>Blocks read per NBD request when the ledger's blocks are contiguous.</summary>
    private const int MaxReadBytes = 1 << 20;

    /// <summary>
    /// Reads every block the ledger names through the export. Safe while the workload still writes to an
    /// in-process ledger: a block that moved on since the ledger was read is checked again against the ledger as it is now.
    /// </summary>
    public static async Task<VerificationReport> VerifyThroughNbdAsync(string socketPath, string exportName, WriteLedger ledger,
        CancellationToken ct = default)
    {
        await using var client = await NbdClient.ConnectAsync(socketPath, exportName, ct: ct);
        return await VerifyAsync($"NBD export '{exportName}' at {socketPath}", ledger, client.ExportSize,
            (offset, buffer) => client.ReadAsync(offset, buffer, ct), ct);
    }

    /// <summary>
    /// Reads the image chain whose leaf is <paramref name="leafImagePath"/> offline (qemu-img convert to a temporary
    /// raw file, with -U so a chain still open elsewhere can be read) and checks every block the ledger names.
    /// The leaf's format is named, never probed: a raw disk whose guest wrote a qcow2 header at its start would
    /// otherwise be read as that qcow2 image (and its backing file, any file of the host).
    /// </summary>
    public static async Task<VerificationReport> VerifyImageAsync(string leafImagePath, VolumeFormat leafFormat, WriteLedger ledger,
        CancellationToken ct = default)
    {
        if (!File.Exists(leafImagePath))
            throw new OperationFailedException(ErrorCodes.VolumeNotFound, $"image {leafImagePath} does not exist");
        var rawPath = Path.Combine(Path.GetTempPath(), $"lsm-verify-{Guid.NewGuid():N}.raw");
        try
        {
            await ProcessRunner.RunCheckedAsync("qemu-img",
                ["convert", "-U", "-f", leafFormat == VolumeFormat.Cow ? "qcow2" : "raw", "-O", "raw", leafImagePath, rawPath],
                ErrorCodes.QemuImgFailed, ct);
            using var raw = File.OpenHandle(rawPath, FileMode.Open, FileAccess.Read);
            var size = RandomAccess.GetLength(raw);
            return await VerifyAsync($"image {leafImagePath}", ledger, size, async (offset, buffer) =>
            {
                var read = 0;
                while (read < buffer.Length)
                {
                    var n = await RandomAccess.ReadAsync(raw, buffer[read..], offset + read, ct);
                    if (n == 0)
                        throw new OperationFailedException(ErrorCodes.IoError, $"unexpected end of {rawPath} at {offset + read}");
                    read += n;
                }
            }, ct);
        }
        finally
        {
            try { File.Delete(rawPath); } catch (IOException) { }
        }
    }

    private static async Task<VerificationReport> VerifyAsync(string source, WriteLedger ledger, long diskSize,
        Func<long, Memory<byte>, Task> read, CancellationToken ct)
    {
        var blockSize = ledger.BlockSize;
        var blocks = ledger.Snapshot();
        var lost = new List<BlockMismatch>();
        var inDoubt = new List<BlockMismatch>();
        var buffer = new byte[Math.Max(MaxReadBytes, blockSize)];
        int durable = 0, unacknowledged = 0;
        var i = 0;
        while (i < blocks.Count)
        {
            ct.ThrowIfCancellationRequested();
            var first = blocks[i];
            if (first.Offset + blockSize > diskSize)
            {
                var beyond = new BlockMismatch(first.Offset, Describe(first), $"nothing: the disk ends at {diskSize} bytes", null);
                (first.Durable is null ? inDoubt : lost).Add(beyond);
                if (first.Durable is not null) durable++;
                if (first.Unacknowledged.Count > 0) unacknowledged++;
                i++;
                continue;
            }
            // One read for a run of contiguous blocks.
            var run = 1;
            while (i + run < blocks.Count && (run + 1) * blockSize <= buffer.Length
                   && blocks[i + run].Offset == first.Offset + (long)run * blockSize
                   && blocks[i + run].Offset + blockSize <= diskSize)
                run++;
            await read(first.Offset, buffer.AsMemory(0, run * blockSize));
            for (var k = 0; k < run; k++)
            {
                var expected = blocks[i + k];
                var content = buffer.AsSpan(k * blockSize, blockSize);
                var verdict = Check(ledger.Drive, expected, content);
                if (verdict is not null && ledger.Find(expected.Offset) is { } current && !SameBlock(current, expected))
                {
                    expected = current; // the writer moved on since the snapshot: judge by the ledger as it is now
                    verdict = Check(ledger.Drive, expected, content);
                }
                if (expected.Durable is not null)
                    durable++;
                if (expected.Unacknowledged.Count > 0)
                    unacknowledged++;
                if (verdict is var (kind, mismatch))
                    (kind == MismatchKind.Lost ? lost : inDoubt).Add(mismatch);
            }
            i += run;
        }
        return new VerificationReport(source, blocks.Count, durable, unacknowledged, lost, inDoubt);
    }

    // LedgerBlock holds lists, whose record equality is by reference.
    private static bool SameBlock(LedgerBlock a, LedgerBlock b) =>
        a.Durable == b.Durable && a.Acknowledged == b.Acknowledged
        && a.Unacknowledged.SequenceEqual(b.Unacknowledged) && a.SinceDurable.SequenceEqual(b.SinceDurable);

    /// <summary>Null when the block is current (holds its last acknowledged write or a later unacknowledged one); otherwise what is wrong and what it means.</summary>
    internal static (MismatchKind Kind, BlockMismatch Mismatch)? Check(ImageId drive, LedgerBlock expected, ReadOnlySpan<byte> content)
    {
        var stamp = BlockStamp.TryRead(content, out var problem);
        BlockMismatch mismatch;
        if (stamp is null)
        {
            // Only unacknowledged writes ever reached this block and none landed: it still holds what it held before the guest.
            if (expected.Acknowledged is null && problem!.StartsWith("not a stamped block", StringComparison.Ordinal))
                return null;
            mismatch = new BlockMismatch(expected.Offset, Describe(expected), problem!, null);
        }
        else if (stamp.Drive != drive || stamp.Offset != expected.Offset)
        {
            mismatch = new BlockMismatch(expected.Offset, Describe(expected),
                $"a stamp of drive {stamp.Drive} for offset {stamp.Offset}, {stamp}", stamp.Sequence);
        }
        else if (expected.IsCurrent(stamp.Sequence, stamp.Checksum))
        {
            return null;
        }
        else
        {
            mismatch = new BlockMismatch(expected.Offset, Describe(expected), stamp.ToString(), stamp.Sequence);
        }
        // Nothing durable on the block: whatever a crash left there, nothing that was promised is missing.
        if (expected.Durable is null)
            return (MismatchKind.InDoubt, mismatch);
        return stamp is not null && stamp.Drive == drive && stamp.Offset == expected.Offset && expected.KeepsDurable(stamp.Sequence, stamp.Checksum)
            ? (MismatchKind.InDoubt, mismatch)
            : (MismatchKind.Lost, mismatch);
    }

    private static string Describe(LedgerBlock expected)
    {
        var acknowledged = expected.Acknowledged is { } a ? a.ToString() : "its content from before the guest";
        if (expected.Durable is { } d && d != expected.Acknowledged)
            acknowledged += $" (durable: {d})";
        else if (expected.Durable is not null)
            acknowledged += " (durable)";
        return expected.Unacknowledged.Count == 0
            ? acknowledged
            : $"{acknowledged} or unacknowledged {string.Join(" or ", expected.Unacknowledged)}";
    }
}
