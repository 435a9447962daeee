using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Guest;

/// <summary>A block that does not hold what the ledger says it must.</summary>
/// <param name="Expected">The stamps the block may hold (last acknowledged, and any in doubt).</param>
/// <param name="Found">What it holds: another stamp, a corrupt one, or foreign data.</param>
/// <param name="FoundSequence">The sequence number of the stamp found, when a whole stamp was found.</param>
public sealed record BlockMismatch(long Offset, string Expected, string Found, long? FoundSequence)
{
    public override string ToString() => $"offset {Offset}: expected {Expected}, found {Found}";
}

/// <param name="Source">What was read: the NBD export or the image file.</param>
/// <param name="BlocksChecked">Blocks the ledger names, all of them read and checked.</param>
/// <param name="InDoubtBlocks">Blocks with a write in doubt (either stamp was accepted).</param>
public sealed record VerificationReport(string Source, int BlocksChecked, int InDoubtBlocks, IReadOnlyList<BlockMismatch> Mismatches)
{
    public bool Ok => Mismatches.Count == 0;

    public override string ToString() => Ok
        ? $"{Source}: {BlocksChecked} blocks verified ({InDoubtBlocks} with a write in doubt), all OK"
        : $"{Source}: {Mismatches.Count} of {BlocksChecked} blocks do not match; first: {Mismatches[0]}";
}

/// <summary>
/// Proves that nothing the guest wrote was lost: every block the ledger names must hold its last acknowledged
/// stamp, or a stamp whose write is in doubt. Reads through the NBD export while the VM runs, or the image
/// chain offline once it is stopped.
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
    /// </summary>
    public static async Task<VerificationReport> VerifyImageAsync(string leafImagePath, WriteLedger ledger, CancellationToken ct = default)
    {
        if (!File.Exists(leafImagePath))
            throw new OperationFailedException(ErrorCodes.VolumeNotFound, $"image {leafImagePath} does not exist");
        var rawPath = Path.Combine(Path.GetTempPath(), $"lsm-verify-{Guid.NewGuid():N}.raw");
        try
        {
            await ProcessRunner.RunCheckedAsync("qemu-img", ["convert", "-U", "-O", "raw", leafImagePath, rawPath],
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
        var mismatches = new List<BlockMismatch>();
        var buffer = new byte[Math.Max(MaxReadBytes, blockSize)];
        var inDoubt = 0;
        var i = 0;
        while (i < blocks.Count)
        {
            ct.ThrowIfCancellationRequested();
            var first = blocks[i];
            if (first.Offset + blockSize > diskSize)
            {
                mismatches.Add(new BlockMismatch(first.Offset, Describe(first), $"nothing: the disk ends at {diskSize} bytes", null));
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
                var mismatch = Check(ledger.Drive, expected, content);
                if (mismatch is not null && ledger.Find(expected.Offset) is { } current && current != expected)
                {
                    expected = current; // the writer moved on since the snapshot: judge by the ledger as it is now
                    mismatch = Check(ledger.Drive, expected, content);
                }
                if (expected.InDoubt.Count > 0)
                    inDoubt++;
                if (mismatch is not null)
                    mismatches.Add(mismatch);
            }
            i += run;
        }
        return new VerificationReport(source, blocks.Count, inDoubt, mismatches);
    }

    /// <summary>Null when the block holds an acceptable stamp; otherwise what is wrong with it.</summary>
    internal static BlockMismatch? Check(ImageId drive, LedgerBlock expected, ReadOnlySpan<byte> content)
    {
        var stamp = BlockStamp.TryRead(content, out var problem);
        if (stamp is null)
        {
            // Only in-doubt writes ever reached this block and none landed: it still holds what it held before the guest.
            if (expected.Acknowledged is null && problem!.StartsWith("not a stamped block", StringComparison.Ordinal))
                return null;
            return new BlockMismatch(expected.Offset, Describe(expected), problem!, null);
        }
        if (stamp.Drive != drive || stamp.Offset != expected.Offset)
            return new BlockMismatch(expected.Offset, Describe(expected),
                $"a stamp of drive {stamp.Drive} for offset {stamp.Offset}, {stamp}", stamp.Sequence);
        if (expected.Accepts(stamp.Sequence, stamp.Checksum))
            return null;
        return new BlockMismatch(expected.Offset, Describe(expected), stamp.ToString(), stamp.Sequence);
    }

    private static string Describe(LedgerBlock expected)
    {
        var acknowledged = expected.Acknowledged is { } a ? a.ToString() : "its content from before the guest";
        return expected.InDoubt.Count == 0
            ? acknowledged
            : $"{acknowledged} or in-doubt {string.Join(" or ", expected.InDoubt)}";
    }
}
